"""The rules every dataset reader applies, one file at a time, and how it treats problems.

Imports no dataset module but `rcnn.datasets.images` (image headers; a leaf), so every
reader (`voc`, `coco`, `yolo`, `csv_labels`) and `rcnn.datasets.check` build on it.

Box rule (continuous pixel coordinates, image ``W x H``):

- a box with a coordinate that is not a finite number, or with ``x2 <= x1`` or ``y2 <= y1``, is an error;
- a box reaching more than `TOLERANCE` (1 px) outside ``[0, W] x [0, H]`` is an error;
- a box poking out by at most 1 px (rounding, or VOC's 0-based slips) is clipped to the
  image and reported as a repair; if clipping leaves it no area, that is an error.

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

__all__ = ["TOLERANCE", "Problem", "ProblemPolicy", "check_boxes", "check_image", "image_path_in", "size_problem"]

TOLERANCE = 1.0  # px a box may poke outside the image and be clipped rather than rejected


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

    Returns ``(float32 [N, 4] boxes, list of Problem)``; `what` (one string per box, default
    ``object i``) names the boxes in the messages. A box in error is zeroed in the result
    (its sample is not used).
    """
    path = str(path)
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        fine = (
            np.isfinite(boxes).all(1)
            & (boxes[:, 0] >= 0)
            & (boxes[:, 1] >= 0)
            & (boxes[:, 2] <= width)
            & (boxes[:, 3] <= height)
            & (boxes[:, 2] > boxes[:, 0])
            & (boxes[:, 3] > boxes[:, 1])
        )
    problems = []
    for i in np.flatnonzero(~fine):
        b = boxes[i]
        name = what[i] if what is not None else f"object {i + 1}"
        shown = "[" + " ".join(f"{v:g}" for v in b) + "]"
        if not np.isfinite(b).all():
            problems.append(
                Problem(path, f"{name}: box {shown} (x1 y1 x2 y2) has a coordinate that is not a finite number")
            )
        elif b[2] <= b[0] or b[3] <= b[1]:
            problems.append(Problem(path, f"{name}: box {shown} (x1 y1 x2 y2) has zero area"))
        elif b[0] < -TOLERANCE or b[1] < -TOLERANCE or b[2] > width + TOLERANCE or b[3] > height + TOLERANCE:
            problems.append(Problem(path, f"{name}: box {shown} (x1 y1 x2 y2) lies outside the {width}x{height} image"))
        elif b[0] < 0 or b[1] < 0 or b[2] > width or b[3] > height:
            c = np.array([max(b[0], 0), max(b[1], 0), min(b[2], width), min(b[3], height)])
            if c[2] <= c[0] or c[3] <= c[1]:
                problems.append(Problem(path, f"{name}: box {shown} has no area inside the {width}x{height} image"))
            else:
                boxes[i] = c
                problems.append(Problem(path, f"{name}: box {shown} clipped to the {width}x{height} image", "repair"))
                continue
        boxes[i] = 0  # an error: the sample is not used; no float32 overflow for a 1e300 coordinate
    return boxes.astype(np.float32), problems


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
