"""The project's own errors: each names the file (or object) and what is wrong with it.

The CLI catches `RcnnError`, prints its one-line message and exits non-zero; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class RcnnError(Exception):
    """Base class of every error `rcnn` raises for bad input or bad use."""


class DatasetError(RcnnError):
    """A dataset file (annotation, image, JSON) is missing, malformed or inconsistent."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ImageError(DatasetError):
    """An image cannot be read: missing, truncated, corrupt or of an unsupported kind."""


class ConfigError(RcnnError):
    """A configuration file or option has an unknown key or an invalid value."""


class DeviceError(ConfigError):
    """The configured device is not available here (``cuda`` without a GPU)."""


class ModelError(RcnnError):
    """A saved model file is corrupt, from another version, or does not fit the data."""


class TrainingDiverged(RcnnError):
    """A training step met a non-finite loss, gradient or weight: training stopped there, the
    last good checkpoint is kept and no model is written."""
