"""CSV box labels: one row per box, ``filename,width,height,class,xmin,ymin,xmax,ymax``.

The form of the TensorFlow Object Detection API's CSVs and Roboflow's "TensorFlow CSV"
export. (The module is not called ``csv`` so as not to shadow Python's.)

- A header row is required; columns are found by name (``filename``, ``class``, ``xmin``,
  ``ymin``, ``xmax``, ``ymax``, and optionally ``width``, ``height``; names are case-blind),
  in any order; other columns are ignored (a row may lack trailing ones).
- ``xmin, ymin, xmax, ymax`` are pixel coordinates taken as continuous corners, exactly
  ``x1, y1, x2, y2`` (no ``+1`` and no ``-1``: the convention of these exports, which write
  pixel edges). A CSV made from VOC XML by copying its 1-based corners is then off by one
  pixel at the top left; convert VOC data with ``rcnn data convert`` instead.
- ``width, height`` are the image's size, checked against the image's header like VOC's
  ``<size>``; without those columns the size comes from the image.
- The rows of one ``filename`` form one sample, in order of first appearance; its id is the
  file's stem (two files with one stem are an error). A row whose ``class`` and four corners
  are all empty is an image without objects.
- ``filename`` is relative to the CSV's folder or to ``images``, and must stay inside it
  (unless ``allow_outside_images``).
- Classes are the sorted names found unless given. The box rule of `rcnn.datasets.rules`
  applies as for every reader; errors name the CSV file and its line.

`write_csv_labels` writes the same form (numbers that read back to the same float32 boxes);
``difficult`` and COCO's ``iscrowd`` / ``area`` have no CSV form and are dropped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from rcnn.cache import read_text, write_text
from rcnn.datasets.core import Dataset, Sample
from rcnn.datasets.rules import Problem, ProblemPolicy, check_boxes, check_image, image_path_in, size_problem
from rcnn.datasets.writing import check_names, exact_number, image_base, relative_name
from rcnn.errors import DatasetError
from rcnn.progress import progress

__all__ = ["read_csv_labels", "write_csv_labels", "COLUMNS"]

COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
REQUIRED = ("filename", "class", "xmin", "ymin", "xmax", "ymax")
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def _size(row, line, where):
    """``((width, height) or None, problem or None)`` of a row."""
    if row.get("width") is None and row.get("height") is None:
        return None, None
    try:
        w, h = int(row["width"]), int(row["height"])
    except (TypeError, ValueError):
        return None, Problem(
            where,
            f"line {line}: width and height must be integers, not {row.get('width')!r:.20}, {row.get('height')!r:.20}",
        )
    if not (0 < w < 2**31 and 0 < h < 2**31):
        return None, Problem(where, f"line {line}: width and height must be positive, not {w}x{h}")
    return (w, h), None


def read_csv_labels(
    path,
    images=None,
    classes=None,
    skip_bad: bool = False,
    check_images: bool = True,
    *,
    allow_outside_images: bool = False,
    policy=None,
    decode: bool = False,
) -> Dataset:
    """The CSV file at `path` as a `Dataset` (see the module docstring). `images` is the folder
    the file names are relative to (default: the CSV's folder). With `check_images` (or when
    the file has no sizes) image headers are read: they must exist, not be over
    `rcnn.datasets.images.MAX_PIXELS` and match ``width, height`` (`decode`: read fully)."""
    path = Path(path)
    where = str(path)
    policy = policy or ProblemPolicy(skip_bad)
    try:
        text = read_text(path, "utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        policy.fatal(Problem(where, f"cannot read: {e}"))
        return Dataset([], [])
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as e:
        policy.fatal(Problem(where, f"malformed CSV: {e}"))
        return Dataset([], [])
    columns = [c.strip().lower() for c in header or []]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        policy.fatal(
            Problem(where, f"needs a header row naming the columns {','.join(COLUMNS)}; lacks {', '.join(missing)}")
        )
        return Dataset([], [])
    if ("width" in columns) != ("height" in columns):
        policy.fatal(Problem(where, "has one of the columns width, height but not the other"))
        return Dataset([], [])
    index = {c: columns.index(c) for c in COLUMNS if c in columns}
    needed = max(index.values()) + 1  # a row may lack trailing columns that are not read
    image_dir = Path(images) if images is not None else path.parent
    known = None if classes is None else set(classes)

    groups: dict[str, dict] = {}  # filename -> {"line", "size", "rows": [(line, name, corners)], "problems"}
    try:
        for row in reader:
            line = reader.line_num
            if not any(f.strip() for f in row):
                continue
            if len(row) < needed:
                policy.accept([Problem(where, f"line {line}: {len(row)} fields, the columns read need {needed}")])
                continue
            values = {c: row[i].strip() for c, i in index.items()}
            filename = values["filename"]
            if not filename:
                policy.accept([Problem(where, f"line {line}: no filename")])
                continue
            group = groups.setdefault(filename, {"line": line, "size": None, "rows": [], "problems": []})
            size, problem = _size(values, line, where)
            if problem:
                group["problems"].append(problem)
            elif size is not None:
                if group["size"] is None:
                    group["size"] = (size, line)
                elif group["size"][0] != size:
                    (w, h), first = group["size"]
                    group["problems"].append(
                        Problem(
                            where,
                            f"line {line}: {filename}: size {size[0]}x{size[1]} differs from line {first}'s {w}x{h}",
                        )
                    )
            name, corners = values["class"], [values[c] for c in _CORNERS]
            if not name and not any(corners):
                continue  # an image without objects
            if not name:
                group["problems"].append(Problem(where, f"line {line}: {filename}: no class"))
                continue
            try:
                numbers = [float(v) for v in corners]
            except ValueError:
                group["problems"].append(
                    Problem(
                        where,
                        f"line {line}: {filename}: xmin, ymin, xmax, ymax must be numbers, not {','.join(corners)!r:.80}",
                    )
                )
                continue
            if known is not None and name not in known:
                group["problems"].append(Problem(where, f"line {line}: {filename}: unknown class '{name}'"))
                continue
            group["rows"].append((line, name, numbers))
    except csv.Error as e:
        policy.fatal(Problem(where, f"line {reader.line_num}: malformed CSV: {e}"))
        return Dataset([], [])

    kept, stems = [], {}
    for filename, group in progress(groups.items(), desc="reading CSV", total=len(groups)):
        problems = group["problems"]
        image_path, outside = image_path_in(image_dir, filename, allow_outside_images)
        stem = Path(filename).stem
        size = group["size"][0] if group["size"] else None
        if outside:
            problems.append(Problem(where, f"line {group['line']}: filename {filename!r:.200} {outside}"))
        elif check_images or size is None:
            actual, image_problems = check_image(image_path, decode)
            problems += image_problems + size_problem(
                where, size, actual, image_path, f"line {group['line']}: {filename}"
            )
            size = size or actual
        if stem in stems:
            problems.append(
                Problem(
                    where, f"line {group['line']}: {filename} has the stem of {stems[stem]}: sample ids would clash"
                )
            )
        else:
            stems[stem] = filename
        rows = group["rows"]
        boxes = np.zeros((0, 4), np.float32)
        if size is not None:
            what = [f"line {line}: {filename} '{name}'" for line, name, _ in rows]
            boxes, box_problems = check_boxes([c for _, _, c in rows], size[0], size[1], where, what)
            problems += box_problems
        if policy.accept(problems):
            kept.append((stem, image_path, size, boxes, [name for _, name, _ in rows]))
    if classes is None:
        classes = sorted({name for *_, names in kept for name in names})
    label = {name: i + 1 for i, name in enumerate(classes)}
    samples = [
        Sample(stem, p, size[0], size[1], boxes, [label[n] for n in names]) for stem, p, size, boxes, names in kept
    ]
    return Dataset(list(classes), samples, policy.skipped, repairs=policy.repairs)


def write_csv_labels(dataset: Dataset, path, images=None) -> Path:
    """Write `dataset` as a CSV file at `path` (the columns of `COLUMNS`; a sample without
    boxes is one row with an empty class and corners). Returns the folder the file names are
    relative to (chosen as `rcnn.datasets.coco.write_coco` does: `images`, else the CSV's
    folder when every image lies inside it, else the images' deepest common folder)."""
    path = Path(path)
    check_names(dataset.classes, "csv", path)
    base = image_base([s.image_path for s in dataset], path.parent, images)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in dataset:
        name = relative_name(s.image_path, base)
        if not len(s.boxes):
            writer.writerow([name, s.width, s.height, "", "", "", "", ""])
        for box, label in zip(s.boxes, s.labels):
            writer.writerow([name, s.width, s.height, dataset.classes[label - 1], *(exact_number(v) for v in box)])
    write_text(path, out.getvalue())
    return base
