"""Datasets: one in-memory form (`Dataset`, `Sample`, `Detections`), readers and writers."""

from rcnn.datasets.core import Dataset, Detections, Sample
from rcnn.datasets.images import read_image

__all__ = ["Dataset", "Detections", "Sample", "read_image"]
