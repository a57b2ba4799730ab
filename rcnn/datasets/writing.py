"""What the dataset writers share: numbers that read back to the same float32, placing an
image file in a written dataset, and the folder a written file's image names are relative to. (Files themselves are written with `rcnn.cache`'s one
atomic write, `write_text` / `atomic_write`.)"""

from __future__ import annotations

import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np

from rcnn.errors import DatasetError, ImageError

__all__ = ["exact_number", "place_image", "image_base", "relative_name", "check_names"]

_FORMAT_NAMES = {"voc": "VOC XML", "csv": "CSV", "yolo": "YOLO's data.yaml", "coco": "COCO JSON"}


def exact_number(target, offset: float = 0.0):
    """The shortest number ``s`` (an int when integral) with ``float32(s + offset) == target``.

    Writers use it so reading a file back gives the same float32 boxes: VOC's
    ``xmin = x1 + 1`` is ``exact_number(x1, -1)``, COCO's ``w`` is ``exact_number(x2, x)``.
    """
    target = np.float32(target)
    guess = float(target) - offset
    if not np.isfinite(guess):
        return guess
    if guess == int(guess) and np.float32(int(guess) + offset) == target:
        return int(guess)
    for digits in range(1, 18):
        s = float(f"{guess:.{digits}g}")
        if np.float32(s + offset) == target:
            return s
    return guess


def place_image(src, dst, images: str = "copy", what: str = "a dataset") -> None:
    """Put the image `src` at `dst` (``images``: ``"copy"`` or ``"link"``, a symbolic link to
    its absolute path), replacing what is there, unless `dst` already is that file. A
    missing `src` raises `ImageError` saying it is needed to write `what`."""
    src, dst = Path(src), Path(dst)
    if images not in ("copy", "link"):
        raise ValueError(f"images must be 'copy' or 'link', not {images!r}")
    if dst.exists() and src.exists() and os.path.samefile(dst, src):
        return
    if not src.is_file():
        raise ImageError(src, f"image file not found (needed to write {what})")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    if images == "copy":
        shutil.copyfile(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def image_base(image_paths, default, images=None) -> Path:
    """The folder a written annotation file's image names are relative to: `images` when
    given (every image must lie inside it), else `default` (the file's folder) when every
    image lies inside it, else the images' deepest common folder. A name then never leaves
    its folder (the readers refuse ``..`` and absolute paths), so such a file is read back
    with ``images=`` that folder (``--images``)."""
    paths = [os.path.abspath(p) for p in image_paths]
    if images is not None:
        base = os.path.abspath(images)
        outside = [p for p in paths if os.path.commonpath([base, p]) != base]
        if outside:
            raise DatasetError(outside[0], f"image lies outside the image folder {base} given for the file names")
        return Path(base)
    base = os.path.abspath(default)
    if paths and not all(os.path.commonpath([base, p]) == base for p in paths):
        base = os.path.commonpath([os.path.dirname(p) for p in paths])
    return Path(base)


def relative_name(image_path, base) -> str:
    """An image's name relative to `base` (from `image_base`), with ``/`` separators."""
    return Path(os.path.relpath(os.path.abspath(image_path), base)).as_posix()


def check_names(classes, fmt: str, where) -> None:
    """Refuse (`DatasetError` naming `where` and the class) a class name the format `fmt`
    (``"voc"``, ``"csv"``, ``"yolo"``, ``"coco"``) cannot carry, so that nothing is written that
    its reader would reject or read back differently: in every format a lone surrogate (no
    UTF-8 form); in VOC a control character (XML 1.0 has no NUL and turns CR into LF) or
    U+FFFE / U+FFFF; in VOC and CSV spaces at either end (the readers strip them); in CSV a
    carriage return."""
    for name in classes:
        bad = None
        surrogate = next((c for c in name if unicodedata.category(c) == "Cs"), None)
        control = next((c for c in name if unicodedata.category(c) == "Cc" or c in "\ufffe\uffff"), None)
        if surrogate:
            bad = f"holds U+{ord(surrogate):04X}, a lone surrogate"
        elif fmt == "voc" and control:
            bad = f"holds the control character U+{ord(control):04X}"
        elif fmt in ("voc", "csv") and name != name.strip():
            bad = "starts or ends with a space"
        elif fmt == "csv" and "\r" in name:
            bad = "holds a carriage return (read back as a line feed)"
        if bad:
            raise DatasetError(where, f"the class name {name!r:.80} {bad}, which {_FORMAT_NAMES[fmt]} cannot carry")
