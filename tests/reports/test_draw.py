"""Drawn detections keep their labels inside the image."""

import numpy as np

from rcnn.datasets import Detections
from rcnn.reports.draw import class_colour, draw_detections


def test_a_label_at_the_right_edge_is_drawn_inside_the_image():
    image = np.zeros((120, 200, 3), np.uint8)
    dets = Detections(
        boxes=np.array([[185, 60, 199, 100]], np.float32),
        scores=np.array([0.97], np.float32),
        labels=np.array([1]),
    )
    out = draw_detections(image, dets, ["rectangle"])
    colour = np.array(class_colour(1), np.uint8)
    label_rows = out[40:60]  # the label's strip sits just above the box's top edge (y 60)
    painted = np.all(label_rows == colour, axis=-1).any(axis=0)
    columns = np.flatnonzero(painted)
    assert columns.size > 40  # "rectangle 0.97" is wider than the 14 px box
    assert columns.max() <= 199 and columns.min() < 185  # moved left, not cut at the edge
