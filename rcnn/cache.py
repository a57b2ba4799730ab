"""The infrastructure under every stage: content hashes, the one atomic write, per-image stores.

- `atomic_write(path)`: every file the project writes (caches, models, checkpoints, reports,
  annotations) goes through a uniquely named temporary file in the target's folder and a
  rename, so a killed run leaves the old file or the new one, never half of one, and two
  writers of one path never share a temporary file.
- `ImageStore`: one folder of per-image ``.npz`` entries (no pickle) named by the image's
  content hash plus, where an entry depends on more than the image and the folder's
  parameters, a hash of that (for example the boxes features were computed on). The folder's
  ``params.json`` says what every entry in it was computed with. An entry that cannot be read
  (truncated, corrupt) counts as missing: it is reported once, deleted and recomputed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from rcnn.errors import ImageError

__all__ = [
    "MAX_FILE_BYTES",
    "NotReadable",
    "check_readable",
    "read_bytes",
    "read_text",
    "file_hash",
    "image_hash",
    "array_hash",
    "params_key",
    "atomic_write",
    "write_text",
    "save_npz",
    "load_npz",
    "ImageStore",
]

FAULT_ENV = "RCNN_FAULT_WRITE"  # tests only: see `_fault`

log = logging.getLogger(__name__)


MAX_FILE_BYTES = 4 << 30  # no input file (image, annotations, model) is read past 4 GiB


class NotReadable(OSError):
    """A path that must not be read whole: not a regular file (a folder, a FIFO or a device
    such as ``/dev/zero``, where a read blocks or never ends) or over `MAX_FILE_BYTES`. An
    `OSError`, so every reader's handling of unreadable files applies."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def check_readable(path, limit: int | None = None) -> os.stat_result:
    """`path`'s stat (symlinks followed) when it is a regular file of at most `limit` bytes
    (default `MAX_FILE_BYTES`); else raises `NotReadable` (or the stat's own `OSError`:
    `FileNotFoundError` for a missing file or a broken link)."""
    st = os.stat(path)
    limit = MAX_FILE_BYTES if limit is None else limit
    if stat.S_ISDIR(st.st_mode):
        raise NotReadable(21, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) else "a socket"
        raise NotReadable(22, f"not a regular file ({kind}): reading it could block or never end")
    if st.st_size > limit:
        raise NotReadable(27, f"file is {st.st_size / 2**30:.1f} GiB, over the {limit / 2**30:.0f} GiB limit")
    return st


def read_bytes(path, limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path` (see `check_readable`)."""
    check_readable(path, limit)
    return Path(path).read_bytes()


def read_text(path, encoding: str = "utf-8", limit: int | None = None) -> str:
    """The text of the regular file at `path` (see `check_readable`); a file that is not
    `encoding` raises `UnicodeDecodeError` as ``Path.read_text`` does."""
    return read_bytes(path, limit).decode(encoding)


def file_hash(path, length: int = 16) -> str:
    """Hex SHA-256 (first `length` characters) of a regular file's bytes (`check_readable`)."""
    check_readable(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def array_hash(*arrays, length: int = 12) -> str:
    """Hex SHA-256 (first `length` characters) of arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:length]


def params_key(params, length: int = 12) -> str:
    """A short stable hash of JSON-able parameters (dict keys sorted)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


_image_hashes: dict[tuple, str] = {}  # (path, size, mtime) -> content hash, for every store in the process


def image_hash(image_path) -> str:
    """`file_hash` of an image, remembered (process-wide) while its size and mtime stay the
    same, so the proposal, feature and detection caches hash each image once. A missing
    file, one that cannot be read (no permission) or one that is not a regular file
    (`check_readable`) raises `ImageError`."""
    image_path = Path(image_path)
    try:
        st = check_readable(image_path)
        memo = (str(image_path), st.st_size, st.st_mtime_ns)
        if memo not in _image_hashes:
            _image_hashes[memo] = file_hash(image_path)
    except OSError as e:
        raise ImageError(image_path, f"cannot read image: {e.strerror or e}") from None
    return _image_hashes[memo]


_writes = 0


def _fault(f) -> None:
    """Fault injection for tests: with ``RCNN_FAULT_WRITE=N`` in the environment the process
    kills itself (SIGKILL, as a power cut or `kill -9` would) in the middle of its N-th atomic
    write, after part of the temporary file is on disk. Unset, this does nothing."""
    global _writes
    target = os.environ.get(FAULT_ENV)
    if not target:
        return
    _writes += 1
    if _writes == int(target):
        f.flush()
        os.kill(os.getpid(), 9)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path`
    (readable by all, like a plain ``open``), on an error it is removed.

    ``with atomic_write(p) as f: np.savez(f, ...)`` / ``torch.save(obj, f)`` / ``f.write(text)``
    (``mode="w"`` for text).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            _fault(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def save_npz(path, **arrays) -> None:
    """Write arrays to `path` (.npz, no pickle) atomically."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


class Damaged(Exception):
    """An entry exists but cannot be read (truncated, corrupt)."""


def load_npz(path) -> dict[str, np.ndarray] | None:
    """The arrays stored at `path`; None when there is no file; `Damaged` when there is one
    that cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise Damaged(f"{path}: {type(e).__name__}: {e}") from None


class ImageStore:
    """Per-image ``.npz`` entries in one `folder` whose ``params.json`` holds `params`.

    An entry is named ``<image content hash>.npz``, or ``<image hash>-<extra>.npz`` when it
    also depends on something per image (`extra`, e.g. `array_hash` of boxes). `read` gives
    None for a missing entry; a damaged one is reported (a warning on this module's logger), deleted,
    counted in `damaged` and read as missing, so the caller recomputes it.
    """

    def __init__(self, folder, params: dict):
        self.folder = Path(folder)
        self.params = params
        self.damaged: list[str] = []

    def path(self, image_path, extra: str = "") -> Path:
        """Where the entry of an image (and `extra`) is, or will be, stored."""
        name = image_hash(image_path) + (f"-{extra}" if extra else "")
        return self.folder / f"{name}.npz"

    def read(self, image_path, extra: str = "", require: tuple[str, ...] = (), repair=None) -> dict | None:
        """The entry's arrays, or None when it is missing. A damaged one (unreadable, or
        lacking an array named in `require`) is reported, deleted and counted; then
        ``repair()`` recomputes and returns it, or without `repair` it reads as missing."""
        path = self.path(image_path, extra)
        try:
            entry = load_npz(path)
            if entry is not None and not set(require) <= entry.keys():
                raise Damaged(f"{path}: lacks {', '.join(sorted(set(require) - entry.keys()))}")
        except Damaged as e:
            self.damaged.append(str(path))
            log.warning(f"damaged cache entry, recomputing it ({e})")
            path.unlink(missing_ok=True)
            return None if repair is None else repair()
        return entry

    def has(self, image_path, extra: str = "", require: tuple[str, ...] = ()) -> bool:
        """Whether a readable entry exists. Checks the zip's directory (catches truncation)
        and the arrays' names without reading their data; `read` catches the rest."""
        path = self.path(image_path, extra)
        if not path.is_file():
            return False
        try:
            with zipfile.ZipFile(path) as z:
                names = {n.removesuffix(".npy") for n in z.namelist()}
            if not set(require) <= names:
                raise zipfile.BadZipFile(f"lacks {', '.join(sorted(set(require) - names))}")
        except (OSError, zipfile.BadZipFile) as e:
            self.damaged.append(str(path))
            log.warning(f"damaged cache entry, recomputing it ({path}: {e})")
            path.unlink(missing_ok=True)
            return False
        return True

    def write(self, image_path, extra: str = "", **arrays) -> None:
        """Store an entry (atomically); writes ``params.json`` first if it is not there."""
        self.write_params()
        save_npz(self.path(image_path, extra), **arrays)

    def write_params(self) -> None:
        """Write ``params.json`` (what every entry here was computed with) once."""
        target = self.folder / "params.json"
        if not target.is_file():
            write_text(target, json.dumps(self.params, indent=1, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def claim(self, path, wait: bool = False):
        """Hold an exclusive lock on entry `path` (a lock file beside it, released when the
        process ends, however it ends). Yields whether it was taken: False when another
        process holds it and not `wait`. Lets concurrent runs on one cache share the work."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    if path.is_file():
                        lock.unlink()  # done: later runs find the entry itself
                fcntl.flock(f, fcntl.LOCK_UN)
