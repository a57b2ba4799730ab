"""What the dataset writers share: numbers that read back to the same float32, and placing
an image file in a written dataset. (Files themselves are written with `rcnn.cache`'s one
atomic write, `write_text` / `atomic_write`.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from rcnn.errors import ImageError

__all__ = ["exact_number", "place_image"]


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
