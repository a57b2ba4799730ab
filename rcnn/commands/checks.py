"""Checks of command-line values made before any work: output paths that can be written
(so a run does not fail at its last step, after all the work) and counts that cannot be
negative. Each failure is an `RcnnError` of one line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rcnn.errors import RcnnError


def count(text: str) -> int:
    """argparse ``type=`` for a count: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _writable_ancestor(path: Path, what: str) -> None:
    """The nearest existing folder at or above `path` must be a folder this process can write in."""
    here = path
    while not here.exists() and here != here.parent:
        if here.is_symlink():
            raise RcnnError(f"{what}: {here} is a broken link")
        here = here.parent
    if not here.is_dir():
        raise RcnnError(f"{what}: {here} is a file, not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        raise RcnnError(f"{what}: cannot write in {here} (read-only or no permission)")


def output_file(path, what: str = "--out") -> Path:
    """`path` as a file to be written: not a folder, in a folder that can be created and
    written in. Returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise RcnnError(f"{what} {path}: is a folder; name the file to write")
    if path.exists() and not path.is_file():
        raise RcnnError(f"{what} {path}: exists and is not a regular file")
    _writable_ancestor(path.parent if str(path.parent) else Path("."), f"{what} {path}")
    return path


def output_folder(path, what: str = "--out") -> Path:
    """`path` as a folder to write into: not a file, creatable and writable. Returns it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RcnnError(f"{what} {path}: is a file; name a folder")
    _writable_ancestor(path, f"{what} {path}")
    return path
