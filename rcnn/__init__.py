"""rcnn: classical region-proposal object detection, the R-CNN way.

Stages, left to right: `rcnn.datasets` -> `rcnn.proposals` -> `rcnn.features` ->
`rcnn.heads` -> `rcnn.detectors`, scored by `rcnn.evaluation`. Box conventions live in
`rcnn.boxes`; errors in `rcnn.errors`.
"""

__version__ = "0.1.0"

import os as _os

# OpenMP threads that sleep instead of spinning while they wait: on a busy 2-core CPU, torch's
# default busy-wait made 2-thread CNN inference 5 to 50 times slower than 1 thread (see
# experiments/bench_features.py). Only takes effect when rcnn is imported before torch.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
