"""The synthetic presets (the road to R-CNN): each one's content, read back from the files."""

import hashlib

import numpy as np

from rcnn.cli import main
from rcnn.datasets import load_dataset
from rcnn.datasets.images import read_image
from rcnn.datasets.synthetic import CLASSES, PRESETS, make_synthetic, render, render_preset


def test_presets_are_in_the_tutorials_order():
    road = ["rectangle", "object", "sizes", "transforms", "backgrounds", "absent", "classes", "multi"]
    assert list(PRESETS) == [*road, "dense"]


def test_rectangle_is_one_white_axis_aligned_box_on_black(tmp_path):
    make_synthetic(tmp_path / "r", images=12, seed=1, size=64, preset="rectangle")
    dataset = load_dataset(tmp_path / "r")
    assert dataset.classes == ["rectangle"] and len(dataset) == 12
    for s in dataset:
        assert len(s.boxes) == 1 and s.labels.tolist() == [1]
        image = read_image(s.image_path)  # PNG: exact pixels
        x1, y1, x2, y2 = s.boxes[0].astype(int)
        assert np.array_equal(s.boxes[0], [x1, y1, x2, y2]) and x2 - x1 >= 9 and y2 - y1 >= 9
        inside = np.zeros(image.shape[:2], bool)
        inside[y1:y2, x1:x2] = True
        assert (image[inside] == 255).all()
        assert (image[~inside] == 0).all()


def test_absent_images_have_no_annotation_and_no_object_pixels(tmp_path):
    dataset = make_synthetic(tmp_path / "a", images=30, seed=0, size=64, preset="absent")
    empty = [s for s in dataset if len(s.boxes) == 0]
    assert 5 <= len(empty) <= 18  # about a third
    assert all(len(s.boxes) == 1 for s in dataset if len(s.boxes))
    assert len(load_dataset(tmp_path / "a")) == 30  # empty annotations read back
    for i in range(30):
        image, boxes, labels, mask = render_preset(np.random.default_rng([0, i]), "absent", 64)
        if len(boxes) == 0:
            assert not mask.any()
        else:
            ys, xs = np.nonzero(mask)
            assert boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_single_object_presets_hold_exactly_one_object():
    for name in ("object", "sizes", "transforms", "backgrounds", "classes"):
        seen = set()
        for i in range(12):
            image, boxes, labels, mask = render_preset(np.random.default_rng([3, i]), name, 96)
            assert image.shape == (96, 96, 3) and image.dtype == np.uint8
            assert len(boxes) == 1 and mask.any(), name
            seen.add(int(labels[0]))
        assert seen == ({1, 2, 3, 4} if name == "classes" else {1}), name
    # object: one fixed size; sizes: many
    widths = {
        name: [np.ptp(render_preset(np.random.default_rng([3, i]), name, 96)[1][0, [0, 2]]) for i in range(12)]
        for name in ("object", "sizes")
    }
    assert np.std(widths["sizes"]) > 2 * np.std(widths["object"])


def test_multi_has_several_objects_and_is_the_default_generator():
    counts = [len(render_preset(np.random.default_rng([0, i]), "multi", 96)[1]) for i in range(20)]
    assert max(counts) >= 3 and sum(c >= 2 for c in counts) >= 5
    a = render(np.random.default_rng([0, 7]), 96)
    b = render_preset(np.random.default_rng([0, 7]), "multi", 96)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_dense_holds_many_small_objects_many_of_them_touching():
    counts, sides, touching = [], [], 0
    for i in range(10):
        image, boxes, labels, mask = render_preset(np.random.default_rng([1, i]), "dense", 256)
        counts.append(len(boxes))
        sides.extend(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 256)
        assert set(labels.tolist()) <= {1, 2, 3}
        # boxes that touch or overlap another: each grown by 2 px meets another one
        grown = boxes + np.array([-2, -2, 2, 2], np.float32)
        lo, hi = np.maximum(grown[:, None, :2], grown[None, :, :2]), np.minimum(grown[:, None, 2:], grown[None, :, 2:])
        meets = ((hi - lo) > 0).all(-1) & ~np.eye(len(boxes), dtype=bool)
        touching += int(meets.any(1).sum())
    assert 6 <= min(counts) and max(counts) <= 24 and np.mean(counts) >= 10
    assert 0.03 <= np.percentile(sides, 5) and np.percentile(sides, 95) <= 0.21  # visible parts: at most the drawn size
    assert touching >= 0.5 * sum(counts)
    assert PRESETS["dense"].classes == ("circle", "rectangle", "triangle")


def _digest(folder):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_preset_multi_writes_the_same_bytes_as_no_preset(tmp_path):
    make_synthetic(tmp_path / "a", images=4, seed=2, size=64)
    make_synthetic(tmp_path / "b", images=4, seed=2, size=64, preset="multi")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    make_synthetic(tmp_path / "c", images=4, seed=2, size=64, preset="classes")
    assert (tmp_path / "c" / "synthetic.json").read_text() != (tmp_path / "a" / "synthetic.json").read_text()


def test_presets_are_deterministic(tmp_path):
    for name in ("transforms", "absent"):
        make_synthetic(tmp_path / f"{name}1", images=5, seed=4, size=64, preset=name)
        make_synthetic(tmp_path / f"{name}2", images=5, seed=4, size=64, preset=name)
        assert _digest(tmp_path / f"{name}1") == _digest(tmp_path / f"{name}2")


def test_cli_synth_preset(tmp_path, capsys):
    assert (
        main(
            [
                "--quiet",
                "data",
                "synth",
                str(tmp_path / "s"),
                "--images",
                "6",
                "--seed",
                "0",
                "--size",
                "64",
                "--preset",
                "classes",
            ]
        )
        == 0
    )
    assert "wrote 6 images" in capsys.readouterr().out
    assert load_dataset(tmp_path / "s", split="train").classes == CLASSES
    assert main(["data", "synth", str(tmp_path / "t"), "--images", "2", "--seed", "0", "--preset", "nope"]) != 0
    assert "unknown preset 'nope'" in capsys.readouterr().err
