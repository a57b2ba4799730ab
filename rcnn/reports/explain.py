"""What each stage of a detector did on one image: `explain(model, image, out_dir)` writes
``index.md`` with a PNG per stage beside it (`rcnn explain`). The page draws only what the
model's `trace(image)` returns (`rcnn.detectors.trace.Trace`), whose last stage is what its
`detect` returns, and picks its sections by what the trace holds:

- proposals and warped crops (R-CNN): ``proposals.png`` and ``proposals_heat.png`` (the top
  proposals, and how often each pixel is covered by any of them), ``windows.png`` and
  ``windows_heat.png`` (the same number of sliding windows, for comparison), ``crops.png``
  (warped crops, context padding included, of the best-scoring proposals, each with its
  best class and score);
- proposals and one feature map (Fast R-CNN): ``proposals.png``, ``proposals_heat.png`` (the
  boxes its RoI head scores), ``feature_map.png`` (the one stride-16 map: the mean of its
  channels in each cell, over the image; with a feature pyramid its stride-16 level),
  ``roi_pooling.png`` (the best-scoring proposal's bins and the block pooled from them, the
  head's input);
- a feature map and anchors (Faster R-CNN): ``feature_map.png``, ``anchors.png`` (the anchors
  of one cell, the most object-like, and how many there are), ``objectness.png`` (the RPN's
  highest objectness over the anchors of each cell), ``proposals.png`` and
  ``proposals_heat.png`` (the RPN's proposals after its NMS, `FasterRCNN.propose`'s, with
  their recall of the ground truth), ``roi_pooling.png``. With a feature pyramid (``[backbone]
  fpn``) the trace, and so the page, holds its stride-16 level only (the feature map, the
  anchors and the objectness of that level; the proposals, pooling and detections are the
  whole model's);
- then, after class scores: ``scores.png`` (every proposal's best score before the
  threshold, and the threshold), ``regression.png`` (boxes before, white, and after, red,
  class-specific box regression), ``nms.png`` (the candidates before non-maximum
  suppression, and what is left after it);
- a localiser's head outputs (no proposals): its three heads' answers and ``box.png``, and
  which stages it skips.
- a dense detector's maps (`Trace.grids`; YOLO, SSD, CenterNet: no proposals):
  ``grid.png`` (one tile per map: its heat in each cell over the image, the cells' edges, and
  on a map with boxes per cell the best box of its hottest cells: YOLO's best box confidence
  and its confidence x class probability on the ``S_h x S_w`` grid, SSD's best class
  probability over each cell's default boxes on each of its maps), with how many boxes each
  map scores (B per cell, the grid, the stride; `Trace.scored`); ``cell_boxes.png`` (the boxes
  of the hottest cell of each map: YOLO's B predicted boxes, SSD's default boxes) or
  ``peaks.png`` (CenterNet: the class heatmap's peaks kept, circled, and the boxes grown
  from them); then ``nms.png`` (the boxes reaching the threshold, and after NMS);
- a mask head (`Trace.masks`, Mask R-CNN, after Faster R-CNN's stages): ``mask_probs.png``
  (the 28 x 28 mask probabilities of the best detections) and ``masks.png`` (their masks
  pasted into the image, as `detect` returns them).

Every page ends with ``detections.png``: the final detections beside the ground truth (when
known). The pictures come from `rcnn.reports.draw`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rcnn.boxes import box_iou
from rcnn.cache import write_text
from rcnn.datasets.core import Detections
from rcnn.reports.draw import (
    caption,
    class_colour,
    draw_boxes,
    draw_detections,
    draw_moves,
    heat_overlay,
    image_grid,
    save_image,
)

__all__ = ["explain", "coverage"]

RCNN_PICTURES = [
    "proposals.png",
    "proposals_heat.png",
    "windows.png",
    "windows_heat.png",
    "crops.png",
    "scores.png",
    "regression.png",
    "nms.png",
    "detections.png",
]
HEAD_PICTURES = ["scores.png", "regression.png", "nms.png", "detections.png"]
FAST_RCNN_PICTURES = ["proposals.png", "proposals_heat.png", "feature_map.png", "roi_pooling.png", *HEAD_PICTURES]
FASTER_RCNN_PICTURES = [
    "feature_map.png",
    "anchors.png",
    "objectness.png",
    "proposals.png",
    "proposals_heat.png",
    "roi_pooling.png",
    *HEAD_PICTURES,
]
MASK_RCNN_PICTURES = [*FASTER_RCNN_PICTURES[:-1], "mask_probs.png", "masks.png", "detections.png"]
GRID_PICTURES = ["grid.png", "cell_boxes.png", "nms.png", "detections.png"]  # a map with boxes per cell: YOLO, SSD
PEAK_PICTURES = ["grid.png", "peaks.png", "nms.png", "detections.png"]  # a heatmap and its peaks: CenterNet
HOT_CELLS = 5  # the hottest cells of a map whose best box `grid.png` draws


def coverage(boxes, image_size) -> np.ndarray:
    """``float32 [H, W]``: how many of `boxes` ``[N, 4]`` cover each pixel of an image of
    ``image_size = (height, width)`` (a summed-area table, so any N is cheap)."""
    h, w = image_size
    acc = np.zeros((h + 1, w + 1), np.float32)
    b = np.round(np.asarray(boxes, np.float32).reshape(-1, 4)).astype(int)
    x1, y1 = b[:, 0].clip(0, w), b[:, 1].clip(0, h)
    x2, y2 = b[:, 2].clip(0, w), b[:, 3].clip(0, h)
    np.add.at(acc, (y1, x1), 1)
    np.add.at(acc, (y1, x2), -1)
    np.add.at(acc, (y2, x1), -1)
    np.add.at(acc, (y2, x2), 1)
    return acc.cumsum(0).cumsum(1)[:h, :w]


def _recall(boxes, gt_boxes, iou: float = 0.5) -> float | None:
    if gt_boxes is None or len(gt_boxes) == 0:
        return None
    if len(boxes) == 0:
        return 0.0
    return float((box_iou(gt_boxes, boxes).max(1) >= iou).mean())


def _holding(boxes, gt_boxes, words: str) -> str:
    """``words`` + the share of the ground truth `boxes` find at IoU >= 0.5, or "" without it."""
    found = _recall(boxes, gt_boxes)
    return "" if found is None else f"{words} {found:.0%} of the ground-truth objects at IoU >= 0.5"


def _scaled(image: np.ndarray, side: int = 480) -> tuple[np.ndarray, float]:
    """`image` enlarged (nearest pixels) so its longer side is about `side`, and the factor."""
    f = max(1, int(side // max(image.shape[:2])))
    return (np.kron(image, np.ones((f, f, 1), np.uint8)) if f > 1 else image), float(f)


class _Page:
    """index.md's lines and the pictures written beside it."""

    def __init__(self, out: Path, title: str, image: np.ndarray):
        self.out, self.lines, self.pictures = out, [f"# {title}", ""], []
        self.sections = 0
        self.image = image
        self.big, self.f = _scaled(image)  # what pictures are drawn on: boxes times f

    def picture(self, name: str, image: np.ndarray, alt: str) -> None:
        save_image(self.out / name, image)
        self.pictures.append(name)
        self.lines += [f"![{alt}]({name})", ""]

    def figure(self, name: str, fig, alt: str) -> None:
        from rcnn.reports.report import save_figure

        save_figure(fig, self.out / name, dpi=110)
        self.pictures.append(name)
        self.lines += [f"![{alt}]({name})", ""]

    def text(self, *lines: str) -> None:
        self.lines += [*lines, ""]

    def section(self, title: str, *lines: str) -> None:
        """A numbered stage: ``## n. title`` and its text."""
        self.sections += 1
        self.text(f"## {self.sections}. {title}", "", *lines)

    def write(self) -> Path:
        write_text(self.out / "index.md", "\n".join(self.lines))
        return self.out / "index.md"


def explain(
    model,
    image: np.ndarray,
    out_dir,
    gt_boxes=None,
    gt_labels=None,
    *,
    name: str = "image",
    top: int = 50,
    crops: int = 24,
) -> dict:
    """Write the explanation page of `model` on ``uint8 [H, W, 3]`` RGB `image` (its ground
    truth `gt_boxes` ``[G, 4]`` and `gt_labels` ``[G]`` when known) into `out_dir`: index.md
    and the pictures beside it. `top`: proposals and windows drawn as outlines; `crops`:
    warped crops in the grid (R-CNN). Returns ``{"index": path, "pictures": [names],
    "detections", "proposals", "trace"}``: the final detections (``model.detect(image)``'s),
    the proposals the page shows (``float32 [N, 4]``; none for a localiser) and the model's
    `trace` the page drew."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if gt_boxes is not None:
        gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    page = _Page(out, f"What {type(model).__name__} did on {name}", image)
    trace = model.trace(image)
    if trace.anchors is not None:
        _rpn_stages(page, model, trace, gt_boxes, top)
    elif trace.proposals is not None:
        _proposal_stages(page, model, trace, gt_boxes, top)
    elif "presence" in trace.outputs:
        _localizer_stages(page, model, trace)
    elif trace.grids:
        _grid_stages(page, model, trace)
    else:
        page.text(
            f"The trace of this {type(model).__name__} holds no proposals, anchors or head outputs this page knows: "
            "it shows the final detections only."
        )
    if trace.proposals is not None:
        if len(trace.proposals) == 0:
            page.text("No proposals: nothing to " + ("warp, " if trace.crops else "") + "score or keep.")
        else:
            if trace.crops is not None:
                _crops(page, model, trace, crops)
            if trace.pooled is not None:
                _roi_pooling(page, model, trace)
            _head_stages(page, model, trace)
    elif trace.grids and trace.stage("regression") is not None:
        _nms(page, model, trace.stage("regression"), trace.detections, "Every box of the maps reaching the threshold")
    if trace.masks is not None:
        _mask_stages(page, model, trace)
    _final(model, image, trace.detections, page, gt_boxes, gt_labels)
    proposals = np.zeros((0, 4), np.float32) if trace.proposals is None else trace.proposals
    return {
        "index": page.write(),
        "pictures": page.pictures,
        "detections": trace.detections,
        "proposals": proposals,
        "trace": trace,
    }


def _outlines_and_heat(page: _Page, name: str, boxes, top: int, colour, what: str) -> None:
    """``name.png``: the first `top` of `boxes` ``[N, 4]`` as outlines, and ``name_heat.png``:
    how many of all of them cover each pixel."""
    big, f = page.big, page.f
    page.picture(f"{name}.png", draw_boxes(big, boxes[:top] * f, colour, 1), f"the first {min(top, len(boxes))} {what}")
    page.picture(f"{name}_heat.png", heat_overlay(big, coverage(boxes * f, big.shape[:2])), f"coverage of all {what}")


def _cell_heat(page: _Page, cells: np.ndarray, fm) -> np.ndarray:
    """A map's values ``[h, w]`` over the page's enlarged image, each pixel taking its
    cell's; `fm`: the trace's `FeatureMap` (its stride and the image's rescaling)."""
    (h, w), f = cells.shape, page.f
    rows = np.minimum(((np.arange(page.big.shape[0]) + 0.5) / f * fm.factor // fm.stride).astype(int), h - 1)
    cols = np.minimum(((np.arange(page.big.shape[1]) + 0.5) / f * fm.factor // fm.stride).astype(int), w - 1)
    return cells[rows][:, cols]


def _backbone(model) -> str:
    """The name of the model's trunk, as its config says it."""
    backbone = getattr(model.config, "backbone", None)
    return str(getattr(backbone, "name", backbone or "the backbone"))


def _feature_map(page: _Page, model, fm, tail: str) -> None:
    """The trace's `FeatureMap` `fm`: its size and the mean of its channels in each cell as a
    heat map (``feature_map.png``)."""
    mean = fm.mean
    rh, rw = (round(side * fm.factor) for side in page.image.shape[:2])
    page.section(
        "One feature map",
        f"The image, rescaled to {rw} x {rh} px (x{fm.factor:.2f}), goes through the trunk ({_backbone(model)} cut "
        f"at stride {fm.stride}) once: a map of **{fm.channels} channels x {fm.rows} x {fm.cols} cells** (rows x "
        f"columns), one cell per {fm.stride} x {fm.stride} px of the rescaled image. The picture: the mean of the "
        f"{fm.channels} channels in each cell (low: dark, high: yellow; from {mean.min():.2f} to {mean.max():.2f}). "
        f"{tail}",
    )
    heat = heat_overlay(page.big, _cell_heat(page, mean - mean.min(), fm))
    page.picture("feature_map.png", heat, f"mean activation of the stride-{fm.stride} map")


def _roi_pooling(page: _Page, model, trace) -> None:
    """How the RoI head takes its input (``roi_pooling.png``): the best-scoring proposal and
    its bins on the image, beside the block ``[C', s, s]`` pooled from them (`Trace.pooled`)."""
    pooled, scores = trace.pooled, trace.scores
    k, block = pooled.index, pooled.block
    label = int(scores[k].argmax()) + 1
    channels, s = block.shape[0], block.shape[-1]
    page.section(
        "RoI pooling",
        f"Each proposal's region of the map is divided into {s} x {s} bins and pooled bin by bin ("
        + (
            "RoI align: the average of bilinear samples of the map in each bin"
            if pooled.mode == "align"
            else "RoI max pooling: the largest value of the cells in each bin"
        )
        + f"): a block of {channels} x {s} x {s} = {channels * s * s} values, the head's input, whatever the "
        f"proposal's size and shape (R-CNN warps the image instead). Left: the best-scoring proposal "
        f"({model.classes_[label - 1]} {scores[k, label - 1]:.2f}) and its bins; right: its block, the mean of "
        f"the {channels} channels in each bin.",
    )
    box = trace.proposals[k] * page.f
    edges = [np.linspace(box[0], box[2], s + 1), np.linspace(box[1], box[3], s + 1)]
    bins = np.array(
        [[x1, y1, x2, y2] for x1, x2 in zip(edges[0], edges[0][1:]) for y1, y2 in zip(edges[1], edges[1][1:])]
    )
    left = draw_boxes(draw_boxes(page.big, bins, class_colour(label), 1), box, class_colour(label))
    mean = block.mean(0)
    side = max(1, min(page.big.shape[:2]) // s)
    tile = heat_overlay(
        np.zeros((s * side, s * side, 3), np.uint8), np.kron(mean - mean.min(), np.ones((side, side))), 1.0
    )
    tiles = [caption(left, f"proposal {k}: {s} x {s} bins"), caption(tile, f"its {channels} x {s} x {s} block (mean)")]
    page.picture("roi_pooling.png", image_grid(tiles, 2), "a proposal's bins and its pooled block")


MOVES = "The {n} best: before (white), after (red), an arrow between centres."
NO_MOVES = "This model has no box regression (`box_regression = false`): the boxes stay as proposed."


def _head_stages(page: _Page, model, trace) -> None:
    """The stages after the class scores ``[N, C]`` of the trace's proposals: the threshold
    (``scores.png``), the regression of those reaching it (``regression.png``) and NMS down
    to the detections (``nms.png``)."""
    from matplotlib.figure import Figure

    c, scores, threshold = model.config, trace.scores, trace.threshold
    before, after, detections = trace.stage("threshold"), trace.stage("regression"), trace.detections
    big, f = page.big, page.f
    if trace.crops is not None:
        head = ""
        how = "ridge regressor (Girshick et al.: tx, ty, tw, th from the crop's features)"
    else:
        fc = getattr(getattr(c, "head", None), "fc", ())
        head = (
            f"Each proposal's pooled block goes through the fc layers ({' -> '.join(map(str, fc))}), which give "
            f"the {len(model.classes_)} classes and the background their probabilities (softmax) and each class "
            "its box deltas. "
            + (
                "Linear SVMs on the last fc layer's features score the classes instead. "
                if trace.score_name == "SVM margin"
                else ""
            )
        )
        how = "deltas from the RoI head (tx, ty, tw, th)"
    moves = f"Each kept box is moved by its class's {how}. " + MOVES if getattr(c, "box_regression", True) else NO_MOVES

    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.hist(scores.max(1), bins=40, color="#4c72b0")
    ax.axvline(threshold, color="#c44e52", label=f"score threshold {threshold:g}")
    ax.axvline(model.draw_threshold, color="#55a868", ls="--", label=f"drawn from {model.draw_threshold:g}")
    ax.set(
        xlabel=f"best class {trace.score_name} of a proposal",
        ylabel="proposals",
        yscale="log",
        title="Scores before the threshold",
    )
    ax.legend(fontsize=8)
    page.section(
        "Scores before the threshold",
        f"{head}{len(scores)} proposals x {scores.shape[1]} classes = {scores.size} scores; {len(before)} reach the "
        f"threshold {threshold:g} and go on (a proposal may go on for several classes). The picture: each "
        "proposal's best class score.",
    )
    page.figure("scores.png", fig, "histogram of scores")

    pick = np.argsort(-before.scores, kind="stable")[:12]
    page.section("Box regression", moves.format(n=len(pick)))
    moved = draw_moves(big, before.boxes[pick] * f, after.boxes[pick] * f)
    page.picture("regression.png", moved, "boxes before and after regression")

    _nms(page, model, after, detections, "The moved boxes")


def _nms(page: _Page, model, after: Detections, detections: Detections, what: str) -> None:
    """``nms.png``: the candidates `after` (the boxes reaching the threshold, `what` says
    which) before non-maximum suppression, and the `detections` left after it and the cap."""
    c, big, f = model.config, page.big, page.f
    none = c.nms_threshold >= 1
    page.section(
        "Non-maximum suppression",
        f"{what}: {len(after)} candidates (left); "
        + (
            f"per class, NMS at IoU {c.nms_threshold:g} keeps the best-scoring box of each overlapping group"
            if not none
            else "no NMS (`nms_threshold = 1`): boxes are only clipped to the image"
        )
        + f" and the best {c.max_detections} overall are kept: {len(detections)} are left (right).",
    )
    left = caption(draw_boxes(big, after.boxes * f, (255, 200, 0), 1), f"before NMS: {len(after)}")
    right = caption(
        draw_detections(big, _scaled_detections(detections, f), model.classes_), f"after NMS: {len(detections)}"
    )
    page.picture("nms.png", image_grid([left, right], 2), "before and after NMS")


def _proposal_stages(page: _Page, model, trace, gt_boxes, top: int) -> None:
    """A detector that scores proposals from a proposer: the proposals, and after them the
    same number of sliding windows (when it warps crops, R-CNN) or its one feature map."""
    from rcnn.proposals import SlidingWindowConfig, make_proposer

    proposals, image = trace.proposals, page.image
    n = len(proposals)
    source = "Given boxes" if trace.proposer == "given" else f"The proposer (`{trace.proposer}`)"
    cap = getattr(model.config, "test_proposals", None)
    page.section(
        "Proposals",
        f"{source} gave the boxes"
        + (f"; the first {cap} are scored" if cap else ", all scored")
        + f": **{n}** here"
        + _holding(proposals, gt_boxes, ", holding")
        + f". Left: the first {min(top, n)} (the proposer's own ranking); right: how many of all of them cover "
        "each pixel.",
    )
    _outlines_and_heat(page, "proposals", proposals, top, (80, 255, 80), "proposals")
    if trace.crops is not None:
        windows_config = SlidingWindowConfig(max_boxes=max(n, 1))
        windows = np.asarray(make_proposer(windows_config)(image), np.float32).reshape(-1, 4)
        same = trace.proposer == "sliding_window"
        page.section(
            "The same number of sliding windows",
            f"{len(windows)} windows of a regular grid (scales {', '.join(f'{s:g}' for s in windows_config.scales)} "
            f"of the image side, aspect ratios {', '.join(f'{a:g}' for a in windows_config.aspect_ratios)})"
            + _holding(windows, gt_boxes, ", holding")
            + ": they cover the image evenly, wherever the objects are"
            + ("." if same else "; compare the heat maps: proposals gather where the image has objects.")
            + (" (This model's proposals are sliding windows already.)" if same else ""),
        )
        _outlines_and_heat(page, "windows", windows, top, (80, 160, 255), "sliding windows")
    fm = trace.feature_map
    if fm is not None:
        tail = (
            "Every proposal's features come from its own region of this one map: one CNN run for the image where "
            f"R-CNN runs one per proposal ({n} here)."
        )
        if fm.levels:  # a feature pyramid: the trace holds its stride-16 level
            tail = (
                f"{_pyramid(fm)}, each proposal pooled from the level its size maps to: one CNN run for the image "
                f"where R-CNN runs one per proposal ({n} here); this page draws the stride-{fm.stride} level only."
            )
        _feature_map(page, model, fm, tail)


def _pyramid(fm) -> str:
    """The first words on a feature pyramid's levels (`FeatureMap.levels`)."""
    shapes = ", ".join(f"{rows} x {cols}" for _, _, _, rows, cols in fm.levels)
    return (
        f"This model has a **feature pyramid** (`[backbone] fpn`): {len(fm.levels)} maps of {fm.channels} "
        f"channels ({shapes} cells, strides {', '.join(str(stride) for _, stride, *_ in fm.levels)} px)"
    )


def _crops(page: _Page, model, trace, n_crops: int) -> None:
    """R-CNN's warped crops of the best-scoring proposals (``crops.png``), each with its best
    class and score, warped as the trace's `Crops` says."""
    from rcnn.features.warp import warp_crops

    w, scores, proposals = trace.crops, trace.scores, trace.proposals
    best, best_class = scores.max(1), scores.argmax(1) + 1
    shown = np.argsort(-best, kind="stable")[:n_crops]
    zoom = max(1, -(-112 // w.size))  # tiles of 112 px at least: room for the caption
    tiles = [
        caption(np.kron(crop, np.ones((zoom, zoom, 1), np.uint8)), f"{model.classes_[best_class[i] - 1]} {best[i]:.2f}")
        for crop, i in zip(warp_crops(page.image, proposals[shown], w.size, w.padding), shown)
    ]
    page.section(
        "Warped crops and their scores",
        f"Every proposal is cut out with {w.padding} px of context, warped to {w.size} x {w.size} px whatever its "
        f"shape, and run through the CNN ({w.backbone}, {w.feature_dim}-d features); the classifier scores each "
        f"class ({trace.score_name}s). The {len(shown)} best-scoring crops, with their best class and score:",
    )
    page.picture("crops.png", image_grid(tiles, 8), "warped crops")


def _rpn_stages(page: _Page, model, trace, gt_boxes, top: int) -> None:
    """A detector that proposes from its own feature map (an RPN): the map, the anchors of one
    cell, the objectness over the cells, and the proposals after the RPN's NMS."""
    fm, an, proposals = trace.feature_map, trace.anchors, trace.proposals
    big, f = page.big, page.f
    if fm.levels:  # a feature pyramid: the trace holds its stride-16 level
        tail = (
            f"{_pyramid(fm)}, the RPN proposing from all of them and the RoI head pooling each proposal from the "
            f"level its size maps to; this page draws the stride-{fm.stride} level only (this map, its anchors and "
            "objectness)."
        )
    else:
        tail = "The RPN proposes from this map and the RoI head scores its proposals on it: one CNN run for the image."
    _feature_map(page, model, fm, tail)

    h, w, a = an.boxes.shape[:3]
    peak = an.objectness.max(0)  # [h, w]
    i, j = np.unravel_index(int(peak.argmax()), peak.shape)
    page.section(
        "Anchors",
        f"At every cell of the map the RPN starts from the same **{a} anchors**: {len(an.sizes)} size(s) "
        f"({', '.join(map(str, an.sizes))} px in the rescaled image) x {len(an.ratios)} aspect ratio(s) (height / "
        f"width {', '.join(f'{r:g}' for r in an.ratios)}), centred on the cell's top-left corner (torchvision's "
        f"grid). {h} x {w} cells x {a} = **{h * w * a} anchors** on this image. The picture: the {a} anchors of the "
        f"cell (row {i}, column {j}; in white) whose best objectness is highest (next stage), in the image's pixels.",
    )
    cell = np.array([j, i, j + 1, i + 1], np.float32) * fm.stride / fm.factor * f
    out = draw_boxes(big, cell, (255, 255, 255), 1)
    for k, anchor in enumerate(an.boxes[i, j] / fm.factor):
        out = draw_boxes(out, anchor * f, class_colour(k + 1), 1)
    page.picture("anchors.png", caption(out, f"{a} anchors at cell ({i}, {j}) of {h} x {w}"), "the anchors of one cell")

    page.section(
        "Objectness",
        f"The RPN's head (a 3 x 3 conv over the map, then 1 x 1 convs) gives each of the {h * w * a} anchors an "
        f"objectness (a probability, by its sigmoid) and 4 deltas that move it. The picture: the highest objectness "
        f"over the {a} anchors of each cell (black 0, yellow 1); highest {peak.max():.2f} at cell ({i}, {j}); "
        f"{int((peak >= 0.5).sum())} of the {h * w} cells have an anchor at 0.5 or more.",
    )
    heat = heat_overlay(big, _cell_heat(page, peak, fm), vmax=1.0)
    page.picture("objectness.png", heat, "highest objectness per cell")

    n = len(proposals)
    page.section(
        "The RPN's proposals",
        f"Each anchor moved by its deltas; the best {an.pre_nms_top_n} by objectness kept, clipped to the image, "
        "the tiny ones dropped"
        + (f", those below objectness {an.score_threshold:g} too" if an.score_threshold > 0 else "")
        + f"; NMS at IoU {an.nms_threshold:g}; the best {an.post_nms_top_n} after it: **{n}** proposals "
        "(`model.propose(image)`)" + _holding(proposals, gt_boxes, ", holding") + f". Left: the first "
        f"{min(top, n)} (by objectness); right: how many of all of them cover each pixel.",
    )
    _outlines_and_heat(page, "proposals", proposals, top, (80, 255, 80), "RPN proposals")


def _localizer_stages(page: _Page, model, trace) -> None:
    """A detector without proposals whose trace holds one presence, class probabilities and
    one box (the localiser): which stages it skips, its heads' answers, ``box.png``."""
    presence, probs, box = trace.outputs["presence"], trace.outputs["class_probs"], trace.outputs["box"]
    c = model.config
    page.text(
        "## Stages this model does not have",
        "",
        "The localiser looks at the whole image once: it has **no proposals and no sliding windows** (1-2), "
        "**no warped crops** (3), **no per-region scores to threshold** (4: one presence instead), **no "
        "regression of proposals** (5: it regresses its one box directly) and **no NMS** (6: one box cannot "
        "overlap another).",
        "",
        "## Its three heads",
        "",
        f"The image, resized to {c.input_size} x {c.input_size}, goes through {_backbone(model)} to one pooled "
        f"feature; from it: presence **{presence:.3f}** (threshold {trace.threshold:g}); class probabilities "
        + ", ".join(f"{name} {q:.3f}" for name, q in zip(model.classes_, probs))
        + f"; box ({', '.join(f'{v:.1f}' for v in box)}) in pixels.",
    )
    big, f = page.big, page.f
    page.picture(
        "box.png",
        caption(draw_boxes(big, box[None] * f, (255, 64, 64)), f"its box, whatever the presence ({presence:.2f})"),
        "the regressed box",
    )


def _grid_lines(image: np.ndarray, rows: int, cols: int, cell: float, colour=(200, 200, 200)) -> np.ndarray:
    """`image` with the lines between ``rows x cols`` cells of `cell` px (none when under 6 px)."""
    if cell < 6:
        return image
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    for j in range(1, cols):
        x = int(round(j * cell))
        if x < w:
            out[:, x] = (out[:, x] * 0.4 + np.array(colour) * 0.6).astype(np.uint8)
    for i in range(1, rows):
        y = int(round(i * cell))
        if y < h:
            out[y] = (out[y] * 0.4 + np.array(colour) * 0.6).astype(np.uint8)
    return out


def _hot_cells(heat: np.ndarray, n: int) -> list[tuple[int, int]]:
    """The `n` cells ``(row, col)`` of highest `heat`, hottest first."""
    order = np.argsort(-heat.ravel(), kind="stable")[:n]
    return [tuple(int(v) for v in np.unravel_index(k, heat.shape)) for k in order]


def _cell_box(g, i: int, j: int, f: float) -> np.ndarray:
    """Cell ``(i, j)`` of grid `g` as a box on the page's picture (enlarged `f` times)."""
    side = g.stride / g.factor * f
    return np.array([j, i, j + 1, i + 1], np.float32) * side


def _grid_stages(page: _Page, model, trace) -> None:
    """A dense detector's maps (`Trace.grids`): each map's heat over the image with its cells
    (``grid.png``; with boxes per cell, the best box of the hottest cells), the boxes of one
    cell on each map that has them (``cell_boxes.png``), and the peaks kept with the boxes
    grown from them (``peaks.png``)."""
    grids, big, f = trace.grids, page.big, page.f
    g0 = grids[0]
    rh, rw = (round(side * g0.factor) for side in page.image.shape[:2])
    counts = ", ".join(f"{n} {what}" for what, n in trace.scored.items())
    n_maps = len({(g.stride, g.shape) for g in grids})  # YOLO: two views of one map
    its = "its map" if n_maps == 1 else f"its {n_maps} maps"
    maps = []
    for g in grids:
        rows, cols = g.shape
        text = f"stride {g.stride} px: **{rows} x {cols} cells**"
        if g.boxes is not None:
            b = g.boxes.shape[2]
            text += f", **{b} {g.boxes_name} boxes per cell** ({rows * cols * b} boxes)"
        maps.append(f"{len(maps) + 1}. {text}; heat: {g.heat_name}, highest {g.heat.max():.2f}")
    page.section(
        "The dense grid",
        f"No proposals: the image, rescaled to {rw} x {rh} px (x{g0.factor:.2f}), goes through the trunk "
        f"({_backbone(model)}) once, and every cell of {its} scores boxes "
        f"in that one pass: **{trace.boxes_scored} boxes scored** on this image ({counts}).",
        "",
        *maps,
        "",
        "The picture, one tile per line above (numbered alike): its heat in each cell (black 0, yellow 1) and the cells' edges"
        + (
            f"; on a map with boxes per cell, the best-scoring box of each of its {HOT_CELLS} hottest cells "
            "(that cell outlined in white)"
            if any(g.boxes is not None for g in grids)
            else ""
        )
        + ("; the peaks kept, circled" if any(g.peaks is not None for g in grids) else "")
        + ".",
    )
    tiles = []
    for n, g in enumerate(grids, 1):
        rows, cols = g.shape
        side = g.stride / g.factor * f
        heat = heat_overlay(big, _cell_heat(page, g.heat, g), vmax=1.0)
        out = _grid_lines(heat, rows, cols, side)
        if g.boxes is not None:
            for i, j in _hot_cells(g.heat, HOT_CELLS):
                k = int(g.box_scores[i, j].argmax())
                out = draw_boxes(out, _cell_box(g, i, j, f), (255, 255, 255), 1)
                out = draw_boxes(out, g.boxes[i, j, k] * f, (80, 255, 80))
        if g.peaks is not None:
            out = _circles(out, g, f)
        tiles.append(caption(out, f"{n}: stride {g.stride}, {rows} x {cols}, max {g.heat.max():.2f}"))
    page.picture("grid.png", image_grid(tiles, min(len(tiles), 2)), "each map's heat over the image")

    boxed = [g for g in grids if g.boxes is not None]
    if boxed:
        per_cell = ", ".join(str(g.boxes.shape[2]) for g in boxed)
        page.section(
            "One cell's boxes",
            f"Each cell scores the same number of boxes ({per_cell} per cell on "
            + ("its map" if len(boxed) == 1 else f"its {len(boxed)} maps")
            + f"; {boxed[0].boxes_name}). The picture: the hottest cell of each map (white) and its boxes, "
            "one colour each, in the image's pixels.",
        )
        tiles = []
        for g in boxed:
            (i, j), b = _hot_cells(g.heat, 1)[0], g.boxes.shape[2]
            out = draw_boxes(big, _cell_box(g, i, j, f), (255, 255, 255))
            for k in range(b):
                out = draw_boxes(out, g.boxes[i, j, k] * f, class_colour(k + 1), 1)
            tiles.append(caption(out, f"stride {g.stride}, cell ({i}, {j}): {b} {g.boxes_name} boxes"))
        page.picture("cell_boxes.png", image_grid(tiles, min(len(tiles), 2)), "the boxes of one cell on each map")

    peaked = [g for g in grids if g.peaks is not None]
    if peaked:
        grown = trace.stage("regression")
        g = peaked[0]
        n = min(len(g.peaks), 20)
        page.section(
            "Peaks and the boxes grown from them",
            f"A peak is a cell equal to the 3 x 3 maximum of its class's heatmap; the best ones reaching the score "
            f"threshold {trace.threshold:g} are kept: **{len(g.peaks)}** here, each the centre of one box, sized by "
            f"the size regressed there and shifted by the offset. The picture: the peaks (circled) over the heat "
            f"and the boxes grown from the {n} best, in their class's colour.",
        )
        out = _circles(heat_overlay(big, _cell_heat(page, g.heat, g), vmax=1.0), g, f)
        if grown is not None and n:
            out = draw_detections(out, _scaled_detections(_first(grown, n), f), model.classes_)
        page.picture("peaks.png", caption(out, f"{len(g.peaks)} peaks, {n} boxes drawn"), "peaks and their boxes")


def _first(d: Detections, n: int) -> Detections:
    """The first `n` of `d`."""
    return Detections(d.boxes[:n], d.scores[:n], d.labels[:n])


def _circles(image: np.ndarray, g, f: float) -> np.ndarray:
    """`image` with grid `g`'s peaks circled at their cells' centres (the page's enlarged pixels)."""
    import cv2

    out = np.ascontiguousarray(image).copy()
    side = g.stride / g.factor * f
    for i, j in g.peaks:
        centre = (int(round((j + 0.5) * side)), int(round((i + 0.5) * side)))
        cv2.circle(out, centre, max(3, int(side / 2)), (80, 255, 255), 1, cv2.LINE_AA)
    return out


def _mask_stages(page: _Page, model, trace) -> None:
    """The mask head (`Trace.masks`): the m x m probabilities of the best detections
    (``mask_probs.png``) and the final masks pasted into the image (``masks.png``)."""
    m, d, big, f = trace.masks, trace.detections, page.big, page.f
    k, side = len(m.index), m.probs.shape[-1]
    filled = sum(_area(mask) > 0 for mask in d.masks or [])
    page.section(
        "The mask head",
        f"Each final detection's box is RoI-aligned from the map and goes through the mask head (convolutions, then "
        f"a 2x up-convolution): **{side} x {side} mask logits per class**, of which its class's are kept and "
        f"turned into probabilities (sigmoid). The picture: those of the {k} best detections (black 0, yellow 1), "
        "each over its box's shape whatever the box's size.",
    )
    zoom = max(1, 112 // side)
    tiles = []
    for n, i in enumerate(m.index):
        tile = heat_overlay(np.zeros((side, side, 3), np.uint8), m.probs[n], 1.0, vmax=1.0)
        label = int(d.labels[i])
        tile = np.kron(tile, np.ones((zoom, zoom, 1), np.uint8))
        tiles.append(caption(tile, f"{model.classes_[label - 1]} {d.scores[i]:.2f}"))
    page.picture("mask_probs.png", image_grid(tiles, 8), "the mask head's probabilities of the best detections")
    page.section(
        "Masks pasted into the image",
        f"Each detection's {side} x {side} probabilities are resized to its box, pasted into the image and cut at "
        f"{m.threshold:g}: one mask per detection ({len(d)}; {filled} with pixels), as `detect` returns them. "
        f"The picture: the masks of the same {k} best detections, filled in their class's colour, with their boxes.",
    )
    best = Detections(d.boxes[m.index] * f, d.scores[m.index], d.labels[m.index], [d.masks[i] for i in m.index])
    out = draw_detections(big, best, model.classes_)
    page.picture("masks.png", caption(out, f"the {k} best of {len(d)} masks"), "the final masks over the image")


def _area(mask) -> int:
    from rcnn.datasets.masks import decode

    return int(decode(mask).sum())


def _scaled_detections(d: Detections, f: float) -> Detections:
    return Detections(d.boxes * f, d.scores, d.labels)


def _final(model, image, detections: Detections, page: _Page, gt_boxes, gt_labels) -> None:
    big, f = page.big, page.f
    keep = detections.scores >= model.draw_threshold
    shown = Detections(detections.boxes[keep] * f, detections.scores[keep], detections.labels[keep])
    tiles = [caption(draw_detections(big, shown, model.classes_), f"detections (score >= {model.draw_threshold:g})")]
    text = f"{int(keep.sum())} detection(s) scoring at least {model.draw_threshold:g} (of {len(detections)})"
    if gt_boxes is not None:
        truth = Detections(gt_boxes * f, np.ones(len(gt_boxes), np.float32), gt_labels)
        tiles.append(
            caption(draw_detections(big, truth, model.classes_, scores=False), f"ground truth: {len(gt_boxes)}")
        )
        found = _recall(detections.boxes[keep], gt_boxes)
        text += f"; the ground truth holds {len(gt_boxes)} object(s)" + (
            f", {found:.0%} of them matched by a detection at IoU >= 0.5" if found is not None else ""
        )
    else:
        text += "; no annotation was given, so no ground truth is shown"
    page.text("## Final detections", "", text + ".")
    page.picture("detections.png", image_grid(tiles, 2), "final detections beside the ground truth")
