import numpy as np
import pytest

from rcnn.errors import ConfigError
from rcnn.proposals import SlidingWindowConfig, SlidingWindows, make_proposer
from rcnn.proposals.sliding_window import interleave, spread_order, window_grid


def test_grid_by_hand():
    (boxes,) = window_grid(100, 100, scales=(0.5,), aspect_ratios=(1.0,), stride=0.5)
    xs = [0, 25, 50]
    expected = [[x, y, x + 50, y + 50] for y in xs for x in xs]
    np.testing.assert_allclose(boxes, expected)


def test_grid_aspect_ratio_and_edges():
    (boxes,) = window_grid(90, 40, scales=(0.5,), aspect_ratios=(2.0,), stride=0.5)
    w, h = boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]
    assert w / h == pytest.approx(2.0) and w * h == pytest.approx(0.25 * 90 * 40)
    assert boxes[:, 0].min() == 0 and boxes[:, 2].max() == pytest.approx(90) and boxes[:, 3].max() == pytest.approx(40)


@pytest.mark.parametrize("budget", [100, 500, 1000, 2000])
def test_exact_budget_inside_the_image(budget):
    boxes = SlidingWindows(max_boxes=budget)(np.zeros((300, 400, 3), np.uint8))
    assert boxes.shape == (budget, 4) and boxes.dtype == np.float32
    assert (boxes >= 0).all() and (boxes[:, 2] <= 400).all() and (boxes[:, 3] <= 300).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 20).all()
    assert len(np.unique(boxes, axis=0)) == budget


def test_prefixes_are_spread_over_scales_and_positions():
    config = SlidingWindowConfig()
    boxes = SlidingWindows(config)(np.zeros((300, 400, 3), np.uint8))
    levels = len(config.scales) * len(config.aspect_ratios)
    shapes = {(round(float(w)), round(float(h))) for w, h in boxes[:levels, 2:] - boxes[:levels, :2]}
    assert len(shapes) == levels  # one window of every scale and aspect ratio first
    centres = (boxes[:200, :2] + boxes[:200, 2:]) / 2
    assert centres[:, 0].min() < 100 and centres[:, 0].max() > 300


def test_interleave_round_robin():
    a = np.array([[0, 0, 1, 1]], np.float32)
    b = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 4, 4]], np.float32)
    np.testing.assert_array_equal(interleave([a, b]), [a[0], b[1], b[0], b[2]])  # middle first


def test_spread_order_is_a_permutation():
    for n in [0, 1, 2, 7, 64, 1000]:
        assert sorted(spread_order(n)) == list(range(n))
    assert list(spread_order(8)) == [0, 4, 2, 6, 1, 5, 3, 7]


def test_odd_images():
    assert SlidingWindows()(np.zeros((10, 10, 3), np.uint8)).shape == (0, 4)
    thin = SlidingWindows(max_boxes=500)(np.zeros((30, 300), np.uint8))  # 1:10 and grayscale
    assert len(thin) == 500 and (thin[:, 3] <= 30).all()


def test_deterministic_and_config():
    image = np.zeros((120, 160, 3), np.uint8)
    np.testing.assert_array_equal(SlidingWindows()(image), make_proposer("sliding_window")(image))
    with pytest.raises(ConfigError):
        SlidingWindowConfig(stride=0)
    assert SlidingWindows(max_boxes=100).key() != SlidingWindows(max_boxes=500).key()
