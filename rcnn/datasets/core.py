"""The one in-memory form of a detection dataset.

A `Dataset` has class names (index ``i`` in `classes` is label ``i + 1``; 0 is background)
and a list of `Sample`s. A sample's boxes are ``float32 [N, 4]`` xyxy in continuous pixel
coordinates (see `rcnn.boxes`), labels ``int64 [N]`` in ``1..C``, difficult ``bool [N]``;
masks, where the data has them, one COCO RLE or None per object (`rcnn.datasets.masks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcnn.boxes import box_area


@dataclass
class Sample:
    """One image and its annotated objects."""

    id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray | None = None  # bool [N]; None: none are
    iscrowd: np.ndarray | None = None  # bool [N], COCO crowd regions; None: none are
    area: np.ndarray | None = None  # float32 [N], COCO's annotated area; None: box area (masks too)
    masks: list | None = None  # one COCO RLE (rcnn.datasets.masks) or None per object; None: no masks

    def __post_init__(self):
        self.image_path = Path(self.image_path)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        self.difficult = (
            np.zeros(len(self.labels), bool) if self.difficult is None else np.asarray(self.difficult, bool).reshape(-1)
        )
        n = len(self.labels)
        self.iscrowd = np.zeros(n, bool) if self.iscrowd is None else np.asarray(self.iscrowd, bool).reshape(-1)
        if self.masks is not None:
            self.masks = list(self.masks)
            if len(self.masks) != n:
                raise ValueError(f"sample {self.id}: {len(self.masks)} masks for {n} objects")
        if self.area is None:
            self.area = box_area(self.boxes)
        self.area = np.asarray(self.area, np.float32).reshape(-1)
        if not (len(self.boxes) == n == len(self.difficult) == len(self.iscrowd) == len(self.area)):
            raise ValueError(f"sample {self.id}: boxes, labels and difficult differ in length")


@dataclass
class Dataset:
    """Class names plus samples; `skipped` lists ``(path, reason)`` left out by ``skip_bad``.

    `category_ids` holds COCO category ids in class order when the data came from COCO
    (results JSON then uses them); otherwise None and results name classes by name.
    """

    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    category_ids: list[int] | None = None
    repairs: list[tuple[str, str]] = field(default_factory=list)  # (path, what was clipped)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, i):
        return self.samples[i]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_of(self, name: str) -> int:
        """The label ``1..C`` of a class name."""
        return self.classes.index(name) + 1

    def name_of(self, label: int) -> str:
        """The class name of a label ``1..C``."""
        return self.classes[int(label) - 1]

    def with_classes(self, classes, category_ids=None) -> Dataset:
        """This dataset with the class list `classes` (labels renumbered to match), which must
        contain every class of this one; the others become classes with no ground truth.

        COCO category ids follow their classes; a new class takes the id given in
        `category_ids` (``{name: id}``) or else the next id after the largest. Raises
        `ValueError` naming the classes `classes` lacks.
        """
        classes = list(classes)
        missing = [c for c in self.classes if c not in classes]
        if missing:
            raise ValueError(f"class(es) {', '.join(missing)} not in {', '.join(classes)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"a class is named twice in {', '.join(classes)}")
        new_label = np.zeros(self.num_classes + 1, np.int64)
        for i, name in enumerate(self.classes):
            new_label[i + 1] = classes.index(name) + 1
        ids = None
        if self.category_ids is not None:
            given = dict(zip(self.classes, self.category_ids))
            extra = dict(category_ids or {})
            next_id = max(list(given.values()) + list(extra.values()) + [0]) + 1
            ids = []
            for name in classes:
                if name not in given and name not in extra:
                    extra[name], next_id = next_id, next_id + 1
                ids.append(given.get(name, extra.get(name)))
        samples = [
            Sample(
                s.id,
                s.image_path,
                s.width,
                s.height,
                s.boxes,
                new_label[s.labels],
                s.difficult,
                s.iscrowd,
                s.area,
                s.masks,
            )
            for s in self.samples
        ]
        return Dataset(classes, samples, list(self.skipped), ids, list(self.repairs))

    def only_classes(self, classes) -> Dataset:
        """This dataset on the class list `classes` alone: objects of a class `classes` lacks
        are dropped (with their difficult / crowd flags and areas); a class this dataset lacks
        has no ground truth (as in `with_classes`)."""
        keep = [i + 1 for i, name in enumerate(self.classes) if name in set(classes)]
        samples = []
        for s in self.samples:
            m = np.isin(s.labels, keep)
            samples.append(
                Sample(
                    s.id,
                    s.image_path,
                    s.width,
                    s.height,
                    s.boxes[m],
                    s.labels[m],
                    s.difficult[m],
                    s.iscrowd[m],
                    s.area[m],
                )
            )
        ids = None if self.category_ids is None else [self.category_ids[i - 1] for i in keep]
        kept = Dataset([self.classes[i - 1] for i in keep], samples, list(self.skipped), ids, list(self.repairs))
        relabel = np.zeros(self.num_classes + 1, np.int64)
        relabel[keep] = np.arange(1, len(keep) + 1)
        for s in kept.samples:
            s.labels = relabel[s.labels]
        return kept.with_classes(classes)

    def duplicate_id(self):
        """``(id, first sample, second sample)`` for the first sample id used twice, else None."""
        seen = {}
        for s in self.samples:
            if s.id in seen:
                return s.id, seen[s.id], s
            seen[s.id] = s
        return None

    def subset(self, ids) -> Dataset:
        """A dataset of the samples whose id is in `ids`, in this dataset's order."""
        ids = set(ids)
        return Dataset(list(self.classes), [s for s in self.samples if s.id in ids], category_ids=self.category_ids)


@dataclass
class Detections:
    """Detections on one image: boxes ``float32 [K, 4]`` xyxy, scores ``float32 [K]``,
    labels ``int64 [K]`` in ``1..C``, and for a detector with masks one COCO RLE per detection
    (`masks`; None: no masks). A dataset's detections are ``dict[sample id, Detections]``."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    masks: list | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError("detections: boxes, scores and labels differ in length")
        if self.masks is not None:
            self.masks = list(self.masks)
            if len(self.masks) != len(self.labels):
                raise ValueError("detections: masks and boxes differ in length")

    def __len__(self) -> int:
        return len(self.scores)
