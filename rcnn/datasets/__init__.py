"""Datasets: one in-memory form (`Dataset`, `Sample`, `Detections`), readers and writers."""

from rcnn.datasets.coco import read_coco, read_detections, write_coco, write_detections
from rcnn.datasets.core import Dataset, Detections, Sample
from rcnn.datasets.images import read_image
from rcnn.datasets.loader import load_dataset
from rcnn.datasets.voc import read_voc, read_voc_folder, write_voc

__all__ = [
    "Dataset",
    "Detections",
    "Sample",
    "read_image",
    "load_dataset",
    "read_voc",
    "read_voc_folder",
    "write_voc",
    "read_coco",
    "write_coco",
    "read_detections",
    "write_detections",
]
