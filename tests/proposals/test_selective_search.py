import subprocess
import sys

import numpy as np
import pytest

from rcnn.boxes import box_iou
from rcnn.config import from_dict
from rcnn.errors import ConfigError, ImageError
from rcnn.proposals import SelectiveSearch, SelectiveSearchConfig, make_proposer, propose
from rcnn.proposals.selective_search import opencv_stock_fast


def scene(height=120, width=160, seed=0):
    """A textured background with three coloured rectangles; returns (image, rectangles xyxy)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
    rects = np.array([[0.1, 0.1, 0.45, 0.5], [0.55, 0.2, 0.9, 0.9], [0.2, 0.6, 0.45, 0.95]]) * [
        width,
        height,
        width,
        height,
    ]
    rects = rects.round().astype(np.float32)
    for (x1, y1, x2, y2), colour in zip(rects.astype(int), [(220, 30, 30), (30, 200, 40), (20, 40, 210)]):
        image[y1:y2, x1:x2] = colour
    return image, rects


def check_boxes(boxes, height, width, min_size, max_boxes):
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert len(boxes) <= max_boxes
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) >= min_size).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)


@pytest.mark.parametrize("mode", ["single", "fast", "custom"])
def test_finds_the_objects_in_every_mode(mode):
    image, rects = scene()
    boxes = SelectiveSearch(mode=mode, min_size=10)(image)
    check_boxes(boxes, 120, 160, 10, 2000)
    assert box_iou(rects, boxes).max(axis=1).min() > 0.9


def test_quality_mode_runs():
    image, rects = scene(60, 80)
    boxes = SelectiveSearch(mode="quality", min_size=5)(image)
    check_boxes(boxes, 60, 80, 5, 2000)
    assert box_iou(rects, boxes).max(axis=1).min() > 0.8


def test_large_image_is_shrunk_and_boxes_mapped_back():
    image, rects = scene(1500, 2000)
    boxes = SelectiveSearch(longest_side=250)(image)
    check_boxes(boxes, 1500, 2000, 20, 2000)
    assert boxes[:, 2].max() > 1900  # full-scale coordinates, not the 250 px working copy
    assert box_iou(rects, boxes).max(axis=1).min() > 0.9


def test_same_boxes_every_call_even_after_other_calls():
    image, _ = scene()
    proposer = SelectiveSearch()
    first = proposer(image)
    opencv_stock_fast(scene(seed=1)[0])  # OpenCV's unseeded ranking draws from the same generator
    SelectiveSearch(seed=7)(scene(seed=2)[0])
    np.testing.assert_array_equal(proposer(image), first)
    np.testing.assert_array_equal(make_proposer("selective_search")(image), first)


def test_seed_changes_only_the_order():
    image, _ = scene()
    a, b = SelectiveSearch(seed=0, max_boxes=0)(image), SelectiveSearch(seed=1, max_boxes=0)(image)
    assert not np.array_equal(a, b)
    assert {tuple(r) for r in a} == {tuple(r) for r in b}


def test_same_boxes_in_a_fresh_process(tmp_path):
    image, _ = scene()
    np.save(tmp_path / "image.npy", image)
    code = (
        "import sys, numpy as np\n"
        "from rcnn.proposals.selective_search import SelectiveSearch\n"
        "np.save(sys.argv[1] + '/boxes.npy', SelectiveSearch()(np.load(sys.argv[1] + '/image.npy')))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "boxes.npy"), SelectiveSearch()(image))


def test_max_boxes_keeps_the_top_of_the_ranking():
    image, _ = scene()
    full = SelectiveSearch(max_boxes=0, min_size=0)(image)
    top = SelectiveSearch(max_boxes=5, min_size=0)(image)
    np.testing.assert_array_equal(top, full[:5])


def test_tiny_image_gives_no_boxes():
    for shape in [(1, 1, 3), (12, 10, 3), (19, 300, 3)]:
        boxes = SelectiveSearch()(np.full(shape, 128, np.uint8))
        assert boxes.shape == (0, 4) and boxes.dtype == np.float32


def test_extreme_aspect_ratios():
    for height, width in [(40, 400), (400, 40), (3, 4000)]:
        image, _ = scene(height, width)
        boxes = SelectiveSearch(min_size=2)(image)
        check_boxes(boxes, height, width, 2, 2000)
        assert len(boxes) > 0


def test_flat_colour_gives_the_whole_image():
    boxes = SelectiveSearch()(np.full((50, 70, 3), 200, np.uint8))
    np.testing.assert_array_equal(boxes, [[0, 0, 70, 50]])


def test_grayscale_and_rgba_inputs():
    image, rects = scene()
    grey = image.mean(axis=2).astype(np.uint8)
    boxes = propose(grey)
    check_boxes(boxes, 120, 160, 20, 2000)
    np.testing.assert_array_equal(propose(np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])), propose(image))


def test_photo_sized_image():
    image = np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
    image[500:2500, 1000:3000] = (250, 10, 10)
    boxes = SelectiveSearch()(image)
    check_boxes(boxes, 3000, 4000, 20, 2000)
    assert box_iou(np.array([[1000, 500, 3000, 2500]], np.float32), boxes).max() > 0.95


def test_bad_input_and_config():
    with pytest.raises(ImageError):
        SelectiveSearch()(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ConfigError):
        SelectiveSearchConfig(mode="turbo")
    with pytest.raises(ConfigError):
        SelectiveSearchConfig(strategies=(("colour",),))
    with pytest.raises(ConfigError):
        make_proposer("edge_boxes")


def test_config_from_toml_lists_and_key():
    config = from_dict(SelectiveSearchConfig, {"color_spaces": ["hsv"], "ks": [100], "strategies": [["fill", "size"]]})
    assert config.strategies == (("fill", "size"),)
    proposer = SelectiveSearch(config)
    assert proposer.key() == make_proposer(**proposer.params()).key()
    assert proposer.key() != SelectiveSearch(from_dict(SelectiveSearchConfig, {"ks": [100]})).key()
    fast = SelectiveSearch(mode="fast")  # presets ignore the custom settings, and so do their keys
    assert fast.key() == SelectiveSearch(mode="fast", ks=(5,)).key() != SelectiveSearch(mode="single").key()
    assert make_proposer(**fast.params()).config == fast.config
