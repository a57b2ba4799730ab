"""What Fast and Faster R-CNN leave to the data: the image size (`choose_scale`), the length in
epochs (`RoITrainConfig.for_images`), both applied by `fit_to_data`, and the warm-up."""

import numpy as np
import pytest

from rcnn.datasets import Dataset, Sample
from rcnn.detectors import load_config
from rcnn.errors import ConfigError
from rcnn.features.roi import choose_scale
from rcnn.heads.fast_rcnn import TrainConfig
from rcnn.heads.roi_trainer import RoITrainConfig, RoITrainer, fit_to_data


def _set(sizes, side_share):
    """Images of ``(width, height)`` each holding one square object of `side_share` x the shortest side."""
    samples = []
    for i, (w, h) in enumerate(sizes):
        side = side_share * min(w, h)
        samples.append(Sample(f"s{i}", f"s{i}.jpg", w, h, np.array([[0, 0, side, side]], np.float32), np.array([1])))
    return Dataset(["a"], samples)


def test_photos_keep_about_their_own_size_up_to_the_cap():
    # cards-like: 378 x 504 photos and a few 512 x 288; median shortest side 378
    data = _set([(378, 504)] * 5 + [(512, 288)] * 2, 0.4)
    assert choose_scale(data)[:2] == (378, 630)
    big = _set([(2000, 1333)] * 3, 0.4)  # capped at 600
    scale, max_size, line = choose_scale(big)
    assert (scale, max_size) == (600, 1000) and "capped at 600" in line


def test_small_objects_ask_for_upsampling_at_most_twice():
    # objects of 13 % of a 256 px side: 33.3 px, under 48 (three cells) -> x1.44 -> 369
    scale, max_size, line = choose_scale(_set([(256, 256)] * 4, 0.13))
    assert scale == 369 and max_size == 615 and "small objects" in line
    assert choose_scale(_set([(256, 256)] * 4, 0.2))[0] == 256  # 51 px objects: as they are
    assert choose_scale(_set([(256, 256)] * 4, 0.02))[0] == 512  # 5 px objects: x2, no more


def test_epochs_become_iterations_for_the_data_at_hand():
    c = RoITrainConfig(epochs=20, lr_step_epochs=14)
    assert c.iterations == 0
    r = c.for_images(296)
    assert (r.iterations, r.lr_step) == (2960, 2072)
    r = c.for_images(160)
    assert (r.iterations, r.lr_step) == (1600, 1120)
    fixed = RoITrainConfig(iterations=300, lr_step=200)  # iterations given: epochs are not read
    assert fixed.for_images(10) is fixed
    assert c.for_images(1).iterations == 20  # one image per batch when there is one
    assert TrainConfig().for_images(296).iterations == 1480  # Fast R-CNN: 10 epochs
    with pytest.raises(ConfigError, match="epochs"):
        RoITrainConfig(epochs=0)


def test_fit_to_data_fills_what_the_config_leaves_open_and_says_so(capsys):
    data = _set([(378, 504)] * 6, 0.4)
    c = fit_to_data(load_config(None, {"detector": "faster_rcnn"}), data)
    assert (c.scale, c.max_size, c.train.iterations, c.train.lr_step) == (378, 630, 60, 42)
    err = capsys.readouterr().err
    assert "shortest side 378 px" in err and "60 iterations (20 epochs of 6 images" in err
    given = load_config(None, {"detector": "fast_rcnn", "scale": 300, "train": {"iterations": 5}})
    c = fit_to_data(given, data)
    assert (c.scale, c.max_size, c.train.iterations) == (300, 500, 5)


def test_test_time_caps_grow_with_the_objects_per_image(capsys):
    crowded = Dataset(
        ["a"],
        [
            Sample(f"s{i}", f"s{i}.jpg", 400, 400, np.tile(np.array([[0, 0, 20, 20]], np.float32), (n, 1)), np.ones(n))
            for i, n in enumerate([5, 60])
        ],
    )
    c = fit_to_data(load_config(None, {"detector": "faster_rcnn"}), crowded)
    assert c.max_detections == 180 and c.rpn.post_nms_top_n_test == 600 and c.rpn.pre_nms_top_n_test == 1200
    assert "raised for up to 60 training objects" in capsys.readouterr().err
    few = fit_to_data(load_config(None, {"detector": "fast_rcnn"}), _set([(400, 400)] * 3, 0.2))
    assert few.max_detections == 100  # the default already allows for them


class _Rates(RoITrainer):
    def meta(self):
        return {}

    def _example(self, *a):
        raise NotImplementedError

    def _loss(self, *a):
        raise NotImplementedError


def test_the_rate_warms_up_linearly_from_the_factor_then_steps():
    cfg = RoITrainConfig(iterations=100, lr=0.01, warmup=10, warmup_factor=0.001, lr_step=50, lr_gamma=0.1)
    rates = [_Rates(cfg, 100, 100).lr(it) for it in range(100)]
    assert rates[0] == pytest.approx(1e-5)
    assert rates[5] == pytest.approx(0.01 * (0.001 + 0.999 * 0.5))
    assert rates[10] == rates[49] == pytest.approx(0.01)
    assert rates[50] == pytest.approx(0.001)
    assert np.all(np.diff(rates[:10]) > 0)
