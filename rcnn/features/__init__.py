"""CNN features of warped region proposals: backbones and weights, crops, extraction, cache.

`FeatureExtractor(...).extract(image, boxes) -> float32 [N, D]`; `build_backbone(name,
weights) -> (module, D, source)` for fine-tuning; `FeatureStore` caches features on disk.
"""

from rcnn.features.backbones import ARCHITECTURES, WEIGHT_SOURCES, build_backbone, load_weights
from rcnn.features.extractor import FeatureConfig, FeatureExtractor, set_threads
from rcnn.features.store import FeatureStore
from rcnn.features.warp import IMAGENET_MEAN, IMAGENET_STD, context_boxes, normalize, warp_crops, warp_normalized

__all__ = [
    "ARCHITECTURES",
    "WEIGHT_SOURCES",
    "build_backbone",
    "load_weights",
    "FeatureConfig",
    "FeatureExtractor",
    "set_threads",
    "FeatureStore",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "context_boxes",
    "normalize",
    "warp_crops",
    "warp_normalized",
]
