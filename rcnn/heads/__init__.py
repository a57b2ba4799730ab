"""Heads on shared CNN features: labelling, per-class SVMs, box regression, softmax fine-tuning.

Training data streams per image (`ImageData`: features of boxes plus the ground truth);
every fitted head saves as plain tensors and values (`state_dict` / `from_state_dict`).
"""

from rcnn.heads.data import ImageData
from rcnn.heads.labeling import IGNORE, NEGATIVE, POSITIVE, Matcher, class_labels, label_proposals
from rcnn.heads.regression import BoxRegressor, RegressionConfig
from rcnn.heads.softmax import FinetuneConfig, FinetuneImage, Finetuner, SoftmaxHead
from rcnn.heads.svm import SVMConfig, SVMHead

__all__ = [
    "ImageData",
    "Matcher",
    "label_proposals",
    "class_labels",
    "POSITIVE",
    "NEGATIVE",
    "IGNORE",
    "SVMConfig",
    "SVMHead",
    "RegressionConfig",
    "BoxRegressor",
    "FinetuneConfig",
    "FinetuneImage",
    "Finetuner",
    "SoftmaxHead",
]
