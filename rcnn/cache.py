"""On-disk caches for the per-image stages (proposals, features).

Entries are keyed by the image's content hash and a hash of the stage's parameters, stored as
``.npz`` (no pickle) and written to a temporary name then renamed, so an interrupted run
leaves either a whole file or none and a re-run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


def file_hash(path, length: int = 16) -> str:
    """Hex SHA-256 (first `length` characters) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def params_key(params, length: int = 12) -> str:
    """A short stable hash of JSON-able parameters (dict keys sorted)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def atomic_save_npz(path, **arrays) -> None:
    """Write arrays to `path` (.npz) through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(path) -> dict[str, np.ndarray] | None:
    """The arrays stored at `path`, or None when absent or unreadable (then it is recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (FileNotFoundError, OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
