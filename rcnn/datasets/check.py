"""`check_dataset`: read a dataset as `load_dataset` does, but list every problem, with its
file, instead of stopping at the first (``rcnn data check``).

The rules themselves (the box rule, image checks, `Problem`, `ProblemPolicy`) are in
`rcnn.datasets.rules`; this module sits above the loader and the readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcnn.datasets.images import IMAGE_SUFFIXES
from rcnn.datasets.loader import dataset_kind, load_dataset
from rcnn.datasets.rules import Problem, ProblemPolicy
from rcnn.errors import DatasetError

__all__ = ["CheckReport", "check_dataset"]


@dataclass
class CheckReport:
    """What `check_dataset` found: the good samples' counts and every problem."""

    path: str
    samples: int = 0
    boxes: int = 0
    masks: int = 0  # objects with a mask
    class_counts: dict = field(default_factory=dict)  # class name -> boxes
    problems: list[Problem] = field(default_factory=list)

    def count(self, severity: str) -> int:
        return sum(p.severity == severity for p in self.problems)

    @property
    def ok(self) -> bool:
        return self.count("error") == 0

    def summary(self) -> str:
        shown = list(self.class_counts.items())
        classes = ", ".join(f"{n} {c}" for n, c in shown[:12]) + (
            f", ... {len(shown) - 12} more" if len(shown) > 12 else ""
        )
        return (
            f"{self.path}: {self.samples} good samples, {self.boxes} boxes"
            f"{f', {self.masks} masks' if self.masks else ''}, {len(self.class_counts)} classes"
            f" ({classes}); {self.count('error')} errors, {self.count('repair')} repairs, {self.count('note')} notes"
        )


def check_dataset(path, split=None, images=None, classes=None, check_images: bool = True) -> CheckReport:
    """Read the dataset at `path` as `load_dataset` does, but decode every image fully (unless
    not `check_images`) and collect every problem, with its file, instead of stopping."""
    policy = ProblemPolicy(collect=True)
    report = CheckReport(str(path), problems=policy.problems)
    try:
        dataset = load_dataset(
            path, split, images, classes=classes, check_images=check_images, policy=policy, decode=check_images
        )
    except DatasetError as e:  # not a dataset at all, or a split that is not there
        policy.problems.append(Problem(e.path or str(path), e.message))
        return report
    if dataset_kind(path) == "folder":
        folder = Path(images) if images is not None else Path(path)
        annotated = {p.stem for p in Path(path).glob("*.xml")}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in annotated:
                policy.problems.append(
                    Problem(str(p), "image without a .xml annotation: not part of the dataset", "note")
                )
    report.samples = len(dataset)
    report.boxes = sum(len(s.boxes) for s in dataset)
    report.masks = sum(m is not None for s in dataset for m in (s.masks or []))
    counts = np.bincount(
        np.concatenate([s.labels for s in dataset] + [np.zeros(0, np.int64)]), minlength=dataset.num_classes + 1
    )
    report.class_counts = {name: int(counts[i + 1]) for i, name in enumerate(dataset.classes)}
    return report
