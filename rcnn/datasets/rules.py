"""The rules every dataset reader applies, one file at a time, and how it treats problems.

Imports no dataset module but `rcnn.datasets.images` (image headers; a leaf), so every
reader (`voc`, `coco`, `yolo`, `csv_labels`) and `rcnn.datasets.check` build on it.

Box rule (continuous pixel coordinates, image ``W x H``):

- a box with a coordinate that is not a finite number, or with ``x2 <= x1`` or ``y2 <= y1``, is an error;
- a box reaching more than `TOLERANCE` (1 px) outside ``[0, W] x [0, H]`` is an error;
- a box poking out by at most 1 px (VOC's 0-based slips, say) is clipped to the image and
  reported as a repair; by at most `ROUNDING` (1e-3 px) or `ROUNDING_RELATIVE` of the
  image side (1e-5: float rounding of a written number, YOLO's normalised ones with 5
  significant digits) it is moved to the edge silently; if clipping leaves it no area, that is an error;
- the rule holds for the float32 values stored: corners that differ only beyond float32's
  precision are a box of zero area.

A sample with an error is bad as a whole: readers raise `DatasetError` / `ImageError`
naming the file, or with ``skip_bad`` leave it out and record ``(path, reason)`` in
`Dataset.skipped` (`ProblemPolicy`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcnn.datasets.images import ROTATING_ORIENTATIONS, read_header, read_image
from rcnn.errors import DatasetError, ImageError

__all__ = [
    "ROUNDING",
    "ROUNDING_RELATIVE",
    "TOLERANCE",
    "Problem",
    "ProblemPolicy",
    "check_boxes",
    "check_image",
    "image_path_in",
    "size_problem",
]

TOLERANCE = 1.0  # px a box may poke outside the image and be clipped rather than rejected
ROUNDING = 1e-3  # px outside the image taken as float rounding: moved to the edge, not a repair,
ROUNDING_RELATIVE = 1e-5  # or this share of the image side, if more (5 significant digits of YOLO's normalised numbers)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file. `severity`: ``"error"``, ``"repair"`` (fixed on load)
    or ``"note"`` (informational)."""

    path: str
    message: str
    severity: str = "error"
    image: bool = False  # an image file's problem: raised as ImageError

    def exception(self) -> DatasetError:
        return (ImageError if self.image else DatasetError)(self.path, self.message)

    def __str__(self) -> str:
        return f"{self.path}: {self.severity}: {self.message}"


class ProblemPolicy:
    """How a reader treats problems, and what it found: raise the first error (default),
    leave bad samples out (``skip_bad``), or keep going and collect every problem
    (``collect``, for `rcnn.datasets.check.check_dataset`).

    Records every `Problem` in `problems`, the samples left out in `skipped` and the repairs
    in `repairs` (``(path, reason)`` pairs, as `Dataset.skipped` / `Dataset.repairs`).
    """

    def __init__(self, skip_bad: bool = False, collect: bool = False):
        self.skip_bad = skip_bad
        self.collect = collect
        self.problems: list[Problem] = []
        self.skipped: list[tuple[str, str]] = []
        self.repairs: list[tuple[str, str]] = []

    def accept(self, problems: list[Problem]) -> bool:
        """Whether a sample with these problems is kept; raises its first error by default."""
        self.problems.extend(problems)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            if not (self.skip_bad or self.collect):
                raise errors[0].exception()
            self.skipped.append((errors[0].path, "; ".join(p.message for p in errors)))
            return False
        self.repairs.extend((p.path, p.message) for p in problems if p.severity == "repair")
        return True

    def fatal(self, problem: Problem) -> None:
        """A problem that spoils the whole dataset (unparseable file): raise unless collecting."""
        self.problems.append(problem)
        if not self.collect:
            raise problem.exception()


def check_boxes(boxes: np.ndarray, width: int, height: int, path, what=None):
    """Apply the box rule to ``boxes [N, 4]`` (float64 or float32) of a ``width x height`` image.

    The rule is checked on the values stored, float32: corners that differ in float64 but
    round to one float32 (``x1 = 152.000001, x2 = 152.000002``) are a box of zero area. A
    corner outside the image by no more than float rounding (of normalised or decimal
    coordinates: `ROUNDING` px or `ROUNDING_RELATIVE` of the image side, whichever is more)
    is moved to the edge without a repair being reported.

    Returns ``(float32 [N, 4] boxes, list of Problem)``; `what` (one string per box, default
    ``object i``) names the boxes in the messages. A box in error is zeroed in the result
    (its sample is not used).
    """
    path = str(path)
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    with np.errstate(over="ignore", invalid="ignore"):
        stored = boxes.astype(np.float32)  # beyond float32's range: inf, not fine
        fine = (
            np.isfinite(stored).all(1)
            & (stored[:, 0] >= 0)
            & (stored[:, 1] >= 0)
            & (stored[:, 2] <= width)
            & (stored[:, 3] <= height)
            & (stored[:, 2] > stored[:, 0])
            & (stored[:, 3] > stored[:, 1])
        )
    out = np.where(fine[:, None], stored, np.float32(0))
    problems = []
    for i in np.flatnonzero(~fine):
        b = boxes[i]
        name = what[i] if what is not None else f"object {i + 1}"
        shown = "[" + " ".join(f"{v:g}" for v in b) + "]"
        if not np.isfinite(b).all():
            problems.append(
                Problem(path, f"{name}: box {shown} (x1 y1 x2 y2) has a coordinate that is not a finite number")
            )
            continue
        if b[2] <= b[0] or b[3] <= b[1]:
            problems.append(Problem(path, f"{name}: box {shown} (x1 y1 x2 y2) has zero area"))
            continue
        if b[0] < -TOLERANCE or b[1] < -TOLERANCE or b[2] > width + TOLERANCE or b[3] > height + TOLERANCE:
            problems.append(Problem(path, f"{name}: box {shown} (x1 y1 x2 y2) lies outside the {width}x{height} image"))
            continue
        b32 = stored[i]  # within 1 px of the image now: no overflow
        low, high = np.zeros(4, np.float32), np.array([width, height, width, height], np.float32)
        beyond = np.maximum(low - b32, b32 - high) / np.maximum(ROUNDING, ROUNDING_RELATIVE * high)
        c = np.clip(b32, low, high)
        if c[2] <= c[0] or c[3] <= c[1]:
            reason = (
                f"has no area inside the {width}x{height} image"
                if beyond.max() > 0
                else "(x1 y1 x2 y2) has zero area in float32, as stored"
            )
            problems.append(Problem(path, f"{name}: box {shown} {reason}"))
            continue
        if beyond.max() > 1:
            problems.append(Problem(path, f"{name}: box {shown} clipped to the {width}x{height} image", "repair"))
        out[i] = c
    return out, problems


def check_image(path, decode: bool = False):
    """Open the image at `path`: its header only (fast), or fully with `decode` (catches
    truncation and corrupt data). Either way an image over
    `rcnn.datasets.images.MAX_PIXELS` is a problem, as `read_image` refuses it. Returns
    ``((width, height) or None, list of Problem)``; the size is the stored one, as
    `read_image` decodes it (EXIF orientation not applied)."""
    path = Path(path)
    if not path.is_file():
        return None, [Problem(str(path), "image file not found", image=True)]
    try:
        if decode:
            h, w = read_image(path).shape[:2]
        else:
            w, h, _ = read_header(path, orientation=False)
    except ImageError as e:
        return None, [Problem(str(path), e.message, image=True)]
    return (w, h), []


def image_path_in(folder, name: str, allow_outside: bool = False):
    """``(path, None)`` for the image `name` (a COCO ``file_name``, a VOC ``<filename>``)
    relative to the image `folder`, or ``(path, reason)`` when `name` may not be used.

    Image paths must stay inside the folder: an absolute path or one whose ``..`` parts
    leave it is refused (a file would otherwise be read, or copied by ``data convert``,
    from anywhere) unless `allow_outside`. The test is on the name as written; symbolic
    links inside the folder are followed as usual. A NUL character or an empty name is
    always refused.
    """
    folder = Path(folder)
    if not name or "\x00" in name:
        return folder / name.replace("\x00", ""), "is empty" if not name else "contains a NUL character"
    path = folder / name
    if allow_outside:
        return path, None
    norm = os.path.normpath(name)
    if os.path.isabs(name) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        return (
            path,
            f"leaves the image folder {folder} (image paths must stay inside it; choose the folder with --images)",
        )
    if norm == os.curdir:
        return path, "names the image folder itself, not a file"
    return path, None


def size_problem(path, annotated, actual, image_path=None, what=None) -> list[Problem]:
    """A problem when the annotated ``(width, height)`` differs from the image's; when the
    image at `image_path` has an EXIF orientation that rotates it, the message says so.
    `what` (e.g. ``image 7 (PATH)``) starts the message."""
    if actual is None or annotated is None or tuple(map(int, annotated)) == tuple(actual):
        return []
    (aw, ah), (w, h) = annotated, actual
    message = f"{what + ': ' if what else ''}annotated size {aw}x{ah} differs from the image's {w}x{h}"
    orientation = 1
    if image_path is not None:
        try:
            orientation = read_header(image_path)[2]
        except ImageError:
            pass
        if orientation in ROTATING_ORIENTATIONS:
            swapped = "; that is its displayed size" if (aw, ah) == (h, w) else ""
            message += (
                f" (EXIF orientation {orientation} rotates it for display{swapped}: rcnn uses the stored pixels,"
                " so annotate the stored image, or rotate the pixels and strip the tag)"
            )
    return [Problem(str(path), message)]
