"""Datasets: one in-memory form (`Dataset`, `Sample`, `Detections`), readers and writers.

Readers and writers: `voc` (VOC roots and folders of images + .xml), `coco` (instances and
results JSON), `yolo` (YOLO roots: data.yaml or classes.txt, images/, labels/), `csv_labels`
(one box per row); `load_dataset` picks the reader by what the path is. `rules` holds the
checks every reader applies, `check` lists every problem of a dataset (``rcnn data check``),
`writing` what the writers share; `masks` the per-object masks (COCO RLE) the readers and
writers carry where the data has them; `synthetic` generates the built-in dataset.
"""

from rcnn.datasets.coco import read_coco, read_detections, write_coco, write_detections
from rcnn.datasets.core import Dataset, Detections, Sample
from rcnn.datasets.csv_labels import read_csv_labels, write_csv_labels
from rcnn.datasets.images import read_image
from rcnn.datasets.loader import load_dataset
from rcnn.datasets.voc import read_voc, read_voc_folder, write_voc
from rcnn.datasets.yolo import read_yolo, write_yolo

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
    "read_yolo",
    "write_yolo",
    "read_csv_labels",
    "write_csv_labels",
]
