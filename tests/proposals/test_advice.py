"""Proposal settings against the data: advice from the training objects' sizes."""

import numpy as np

from rcnn.datasets import Dataset, Sample
from rcnn.proposals import SelectiveSearchConfig, SlidingWindowConfig
from rcnn.proposals.advice import scale_advice


def dataset_of(side: float, image=(640, 480), n=20) -> Dataset:
    """`n` images of `image` (width, height) px, each with one square object of `side` px."""
    w, h = image
    samples = [
        Sample(f"im{i}", f"im{i}.jpg", w, h, np.array([[10, 10, 10 + side, 10 + side]], np.float32), [1])
        for i in range(n)
    ]
    return Dataset(["thing"], samples)


def test_small_objects_get_advice_on_min_size_and_working_size():
    lines = scale_advice(dataset_of(16), SelectiveSearchConfig())
    assert len(lines) == 2
    assert "100% of the training objects are under proposals.min_size = 20 px" in lines[0]
    assert "--set proposals.min_size=12" in lines[0]  # 80 % of the 5th percentile (16 px)
    # 16 px in a 640 px photo is 7.5 px at the 300 px working size: 24 / 7.5 = 3.2 -> 960, capped at 640
    assert "--set proposals.longest_side=640" in lines[1]


def test_objects_that_suit_the_settings_get_none():
    assert scale_advice(dataset_of(200), SelectiveSearchConfig()) == []
    assert scale_advice(dataset_of(16), SelectiveSearchConfig(min_size=4, longest_side=0)) == []
    assert scale_advice(dataset_of(16), SlidingWindowConfig()) == []  # windows have neither setting
    assert scale_advice(Dataset(["thing"], []), SelectiveSearchConfig()) == []
