"""rcnn: classical region-proposal object detection, the R-CNN way.

Stages, left to right: `rcnn.datasets` -> `rcnn.proposals` -> `rcnn.features` ->
`rcnn.heads` -> `rcnn.detectors`, scored by `rcnn.evaluation`. Box conventions live in
`rcnn.boxes`; errors in `rcnn.errors`.
"""

__version__ = "0.1.0"
