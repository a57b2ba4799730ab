"""Detection evaluation: Pascal VOC AP (`evaluate_voc`) and COCO AP/AR (`evaluate_coco`)."""

from rcnn.evaluation.coco import evaluate_coco
from rcnn.evaluation.voc import VocResult, evaluate_voc

__all__ = ["evaluate_coco", "evaluate_voc", "VocResult"]
