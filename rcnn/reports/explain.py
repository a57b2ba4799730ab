"""What each stage of a detector did on one image: `explain(model, image, out_dir)` writes
``index.md`` with a PNG per stage beside it (`rcnn explain`). Every number and box on a
page comes from the model's own computations (the functions its `detect` calls).

For an R-CNN (`rcnn.detectors.RCNN`), in the order the image flows through it:

1. ``proposals.png``: the top proposals, and ``proposals_heat.png``: how often each pixel is
   covered by any of them (where the proposer looks);
2. ``windows.png``, ``windows_heat.png``: the same number of sliding windows, for comparison;
3. ``crops.png``: warped crops (context padding included) of the best-scoring proposals,
   each with its best class and score;
4. ``scores.png``: every proposal's best score before the threshold, and the threshold;
5. ``regression.png``: boxes before (white) and after (red) class-specific box regression;
6. ``nms.png``: the candidates before non-maximum suppression, and what is left after it;
7. ``detections.png``: the final detections beside the ground truth (when known).

For a Fast R-CNN (`rcnn.detectors.FastRCNN`): ``proposals.png`` and ``proposals_heat.png``
(the boxes its RoI head scores), ``feature_map.png`` (the one stride-16 map: the mean of its
channels in each cell, over the image), ``roi_pooling.png`` (the best-scoring proposal's
bins and the block pooled from them, the head's input), then ``scores.png`` (the RoI head's
class probabilities or SVM margins), ``regression.png``, ``nms.png`` and ``detections.png``
as above.

For a Faster R-CNN (`rcnn.detectors.FasterRCNN`): ``feature_map.png``, ``anchors.png`` (the
anchors of one cell, the most object-like, and how many there are), ``objectness.png`` (the
RPN's highest objectness over the anchors of each cell), ``proposals.png`` and
``proposals_heat.png`` (the RPN's proposals after its NMS: `FasterRCNN.propose`'s, with
their recall of the ground truth), ``roi_pooling.png``, ``scores.png``, ``regression.png``,
``nms.png`` and ``detections.png``. A Faster R-CNN with a feature pyramid (``[backbone]
fpn``) proposes and pools from every level, but the page draws its stride-16 level only (the
feature map, the anchors and the objectness of that level; the proposals, pooling and
detections are the whole model's).

A localiser (`rcnn.detectors.Localizer`) has no proposals, crops, regression of proposals
or NMS: its page shows its three heads' answers and the box, and says which stages it skips.
Any other detector gets its final detections and a note. The pictures come from
`rcnn.reports.draw`.
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

__all__ = ["explain", "coverage", "rpn_maps"]

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


def rpn_maps(model, fmap, size, level: str = "1") -> tuple[np.ndarray, np.ndarray]:
    """What a Faster R-CNN's RPN sees on its stride-16 map `fmap` ``[1, C, h, w]`` of an
    image rescaled to ``size = (height, width)``: ``(anchors float32 [h, w, A, 4]`` in the
    rescaled image's pixels, from its own anchor generator, ``objectness float32 [A, h, w]``,
    its head's probabilities ``)``. With a feature pyramid `fmap` is its dict of maps and
    these are the `level`'s (default ``"1"``, stride 16), the anchors generated over every
    level as the RPN generates them."""
    import torch

    from rcnn.detectors.faster_rcnn import _features, _image_list

    rpn, maps = model.net_.rpn, _features(fmap)
    index = list(maps).index(level) if isinstance(fmap, dict) else 0
    with torch.inference_mode():
        anchors = rpn.anchor_generator(_image_list(fmap, size), list(maps.values()))[0]
        objectness = torch.sigmoid(rpn.head(list(maps.values()))[0][index][0])
    counts = [
        m.shape[-2] * m.shape[-1] * rpn.anchor_generator.num_anchors_per_location()[i]
        for i, m in enumerate(maps.values())
    ]
    anchors = anchors[sum(counts[:index]) : sum(counts[: index + 1])]
    h, w = list(maps.values())[index].shape[-2:]
    return anchors.cpu().numpy().reshape(h, w, -1, 4), objectness.cpu().numpy()


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
    "detections", "proposals"}``: the final detections (``model.detect(image)``'s) and the
    proposals the page shows (``float32 [N, 4]``; none for a localiser)."""
    from rcnn.detectors.fast_rcnn import FastRCNN
    from rcnn.detectors.faster_rcnn import FasterRCNN
    from rcnn.detectors.localizer import Localizer
    from rcnn.detectors.rcnn import RCNN

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if gt_boxes is not None:
        gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    page = _Page(out, f"What {type(model).__name__} did on {name}", image)
    proposals = np.zeros((0, 4), np.float32)
    if isinstance(model, RCNN):
        detections, proposals = _explain_rcnn(model, image, page, gt_boxes, top, crops)
    elif isinstance(model, FastRCNN):
        detections, proposals = _explain_fast_rcnn(model, image, page, gt_boxes, top)
    elif isinstance(model, FasterRCNN):
        detections, proposals = _explain_faster_rcnn(model, image, page, gt_boxes, top)
    elif isinstance(model, Localizer):
        detections = _explain_localizer(model, image, page)
    else:
        page.text(
            f"This page knows the stages of R-CNN, Fast and Faster R-CNN and of the localiser; for a "
            f"{type(model).__name__} it shows the final detections only."
        )
        detections = model.detect(image)
    _final(model, image, detections, page, gt_boxes, gt_labels)
    return {"index": page.write(), "pictures": page.pictures, "detections": detections, "proposals": proposals}


def _outlines_and_heat(page: _Page, name: str, boxes, top: int, colour, what: str) -> None:
    """``name.png``: the first `top` of `boxes` ``[N, 4]`` as outlines, and ``name_heat.png``:
    how many of all of them cover each pixel."""
    big, f = page.big, page.f
    page.picture(f"{name}.png", draw_boxes(big, boxes[:top] * f, colour, 1), f"the first {min(top, len(boxes))} {what}")
    page.picture(f"{name}_heat.png", heat_overlay(big, coverage(boxes * f, big.shape[:2])), f"coverage of all {what}")


def _cell_heat(page: _Page, cells: np.ndarray, factor: float) -> np.ndarray:
    """A stride-16 map's values ``[h, w]`` over the page's enlarged image, each pixel taking
    its cell's; `factor`: the image's rescaling before the network."""
    (h, w), f = cells.shape, page.f
    rows = np.minimum(((np.arange(page.big.shape[0]) + 0.5) / f * factor // 16).astype(int), h - 1)
    cols = np.minimum(((np.arange(page.big.shape[1]) + 0.5) / f * factor // 16).astype(int), w - 1)
    return cells[rows][:, cols]


def _feature_map(page: _Page, fmap, factor: float, backbone, tail: str) -> None:
    """The stride-16 map `fmap` ``[1, C, h, w]`` of the image rescaled by `factor`: its size
    and the mean of its channels in each cell as a heat map (``feature_map.png``)."""
    c, h, w = fmap.shape[1:]
    mean = fmap[0].float().mean(0).cpu().numpy()
    rh, rw = (round(side * factor) for side in page.image.shape[:2])
    page.section(
        "One feature map",
        f"The image, rescaled to {rw} x {rh} px (x{factor:.2f}), goes through the trunk ({backbone.name} cut at "
        f"stride 16) once: a map of **{c} channels x {h} x {w} cells** (rows x columns), one cell per 16 x 16 px "
        f"of the rescaled image. The picture: the mean of the {c} channels in each cell (low: dark, high: yellow; "
        f"from {mean.min():.2f} to {mean.max():.2f}). {tail}",
    )
    heat = heat_overlay(page.big, _cell_heat(page, mean - mean.min(), factor))
    page.picture("feature_map.png", heat, "mean activation of the stride-16 map")


def _roi_pooling(page: _Page, model, proposals, scores, pool) -> None:
    """How the RoI head takes its input (``roi_pooling.png``): the best-scoring of
    `proposals` ``[N, 4]`` (by `scores` ``[N, C]``) and its bins on the image, beside the block
    ``[C', s, s]`` that ``pool(k)`` (the model's own pooling of proposal k) gives."""
    c = model.config
    k = int(scores.max(1).argmax())
    label = int(scores[k].argmax()) + 1
    block = pool(k)
    channels, s = block.shape[0], block.shape[-1]
    kind = "align" if c.roi.mode == "align" else "pool"
    page.section(
        "RoI pooling",
        f"Each proposal's region of the map is divided into {s} x {s} bins and pooled bin by bin ("
        + (
            "RoI align: the average of bilinear samples of the map in each bin"
            if kind == "align"
            else "RoI max pooling: the largest value of the cells in each bin"
        )
        + f"): a block of {channels} x {s} x {s} = {channels * s * s} values, the head's input, whatever the "
        f"proposal's size and shape (R-CNN warps the image instead). Left: the best-scoring proposal "
        f"({model.classes_[label - 1]} {scores[k, label - 1]:.2f}) and its bins; right: its block, the mean of "
        f"the {channels} channels in each bin.",
    )
    box = proposals[k] * page.f
    edges = [np.linspace(box[0], box[2], s + 1), np.linspace(box[1], box[3], s + 1)]
    bins = np.array(
        [[x1, y1, x2, y2] for x1, x2 in zip(edges[0], edges[0][1:]) for y1, y2 in zip(edges[1], edges[1][1:])]
    )
    left = draw_boxes(draw_boxes(page.big, bins, class_colour(label), 1), box, class_colour(label))
    mean = block.float().mean(0).cpu().numpy()
    side = max(1, min(page.big.shape[:2]) // s)
    tile = heat_overlay(
        np.zeros((s * side, s * side, 3), np.uint8), np.kron(mean - mean.min(), np.ones((side, side))), 1.0
    )
    tiles = [caption(left, f"proposal {k}: {s} x {s} bins"), caption(tile, f"its {channels} x {s} x {s} block (mean)")]
    page.picture("roi_pooling.png", image_grid(tiles, 2), "a proposal's bins and its pooled block")


def _head_stages(page: _Page, model, proposals, scores, picked, after, detections, words: tuple) -> None:
    """The stages after the scores ``[N, C]`` of `proposals` ``[N, 4]``: the threshold
    (``scores.png``), the regression of those reaching it (``picked = (rows, cols)``, cols
    0-based classes; `after`: their boxes once moved, ``regression.png``) and NMS down to
    `detections` (``nms.png``). `words`: ``(head, xlabel, moves)``, what gave the scores,
    what a score is, what moves the boxes (``{n}``: how many are drawn)."""
    from matplotlib.figure import Figure

    c, (rows, cols), (head, xlabel, moves) = model.config, picked, words
    big, f = page.big, page.f
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.hist(scores.max(1), bins=40, color="#4c72b0")
    ax.axvline(c.min_score, color="#c44e52", label=f"score threshold {c.min_score:g}")
    ax.axvline(model.draw_threshold, color="#55a868", ls="--", label=f"drawn from {model.draw_threshold:g}")
    ax.set(xlabel=xlabel, ylabel="proposals", yscale="log", title="Scores before the threshold")
    ax.legend(fontsize=8)
    page.section(
        "Scores before the threshold",
        f"{head}{len(scores)} proposals x {scores.shape[1]} classes = {scores.size} scores; {len(rows)} reach the "
        f"threshold {c.min_score:g} and go on (a proposal may go on for several classes). The picture: each "
        "proposal's best class score.",
    )
    page.figure("scores.png", fig, "histogram of scores")

    kept = scores[rows, cols]
    pick = np.argsort(-kept, kind="stable")[:12]
    page.section("Box regression", moves.format(n=len(pick)))
    moved = draw_moves(big, proposals[rows][pick] * f, after[pick] * f)
    page.picture("regression.png", moved, "boxes before and after regression")

    page.section(
        "Non-maximum suppression",
        f"{len(kept)} candidates overlap heavily (left); per class, NMS at IoU {c.nms_threshold:g} keeps the "
        f"best-scoring box of each overlapping group and the best {c.max_detections} overall: {len(detections)} "
        "are left (right).",
    )
    left = caption(draw_boxes(big, after * f, (255, 200, 0), 1), f"before NMS: {len(kept)}")
    right = caption(
        draw_detections(big, _scaled_detections(detections, f), model.classes_), f"after NMS: {len(detections)}"
    )
    page.picture("nms.png", image_grid([left, right], 2), "before and after NMS")


MOVES = "The {n} best: before (white), after (red), an arrow between centres."
NO_MOVES = "This model has no box regression (`box_regression = false`): the boxes stay as proposed."


def _explain_rcnn(model, image, page: _Page, gt_boxes, top: int, n_crops: int) -> tuple[Detections, np.ndarray]:
    from rcnn.features.warp import warp_crops
    from rcnn.proposals import SlidingWindowConfig, make_proposer

    c = model.config
    proposals = np.asarray(make_proposer(c.proposals)(image), np.float32).reshape(-1, 4)
    n = len(proposals)
    page.section(
        "Proposals",
        f"The proposer (`{c.proposals.method}`) gave **{n}** boxes"
        + _holding(proposals, gt_boxes, "; they hold")
        + f". Left: the first {min(top, n)} (the proposer's own ranking); right: how many of all of them cover "
        "each pixel.",
    )
    _outlines_and_heat(page, "proposals", proposals, top, (80, 255, 80), "proposals")

    windows_config = SlidingWindowConfig(max_boxes=max(n, 1))
    windows = np.asarray(make_proposer(windows_config)(image), np.float32).reshape(-1, 4)
    same = c.proposals.method == "sliding_window"
    page.section(
        "The same number of sliding windows",
        f"{len(windows)} windows of a regular grid (scales {', '.join(f'{s:g}' for s in windows_config.scales)} of "
        f"the image side, aspect ratios {', '.join(f'{a:g}' for a in windows_config.aspect_ratios)})"
        + _holding(windows, gt_boxes, ", holding")
        + ": they cover the image evenly, wherever the objects are"
        + ("." if same else "; compare the heat maps: proposals gather where the image has objects.")
        + (" (This model's proposals are sliding windows already.)" if same else ""),
    )
    _outlines_and_heat(page, "windows", windows, top, (80, 160, 255), "sliding windows")
    if n == 0:
        page.text("No proposals: nothing to warp, score or keep.")
        return Detections(), proposals

    features = model.extractor_.extract(image, proposals)
    scores = np.asarray(model.classifier_.decision_function(features), np.float32)  # [N, C]
    best, best_class = scores.max(1), scores.argmax(1) + 1
    order = np.argsort(-best, kind="stable")
    fc = model.extractor_.config
    shown = order[:n_crops]
    zoom = max(1, -(-112 // fc.crop_size))  # tiles of 112 px at least: room for the caption
    tiles = [
        caption(np.kron(crop, np.ones((zoom, zoom, 1), np.uint8)), f"{model.classes_[best_class[i] - 1]} {best[i]:.2f}")
        for crop, i in zip(warp_crops(image, proposals[shown], fc.crop_size, fc.padding), shown)
    ]
    page.section(
        "Warped crops and their scores",
        f"Every proposal is cut out with {fc.padding} px of context, warped to {fc.crop_size} x {fc.crop_size} "
        f"px whatever its shape, and run through the CNN ({fc.backbone}, {model.extractor_.feature_dim}-d "
        f"features); the {c.classifier} scores each class. The {len(shown)} best-scoring crops, with their best "
        "class and score:",
    )
    page.picture("crops.png", image_grid(tiles, 8), "warped crops")

    rows, cols = np.nonzero(scores >= c.min_score)
    after = proposals[rows]
    if model.regressor_ is not None and len(rows):
        after = model.regressor_.predict(features[rows], after, cols.astype(np.int64) + 1)
    detections = model.predict(proposals, features, image.shape[:2])
    moves = (
        "Each kept box is moved by its class's ridge regressor (Girshick et al.: tx, ty, tw, th from the crop's "
        "features). " + MOVES
        if model.regressor_ is not None
        else NO_MOVES
    )
    words = ("", "best class score of a proposal", moves)
    _head_stages(page, model, proposals, scores, (rows, cols), after, detections, words)
    return detections, proposals


def _roi_head_stages(page: _Page, model, proposals, scores, picked, after) -> Detections:
    """A Fast or Faster R-CNN's RoI head stages (`_head_stages`) after its scores ``[N, C]``
    of `proposals`, ``picked = (rows, cols)`` those reaching its threshold and `after` their
    boxes once moved; returns the detections, from them as its `detect` makes them."""
    from rcnn.detectors.base import postprocess

    c, (rows, cols) = model.config, picked
    labels = cols.astype(np.int64) + 1
    detections = postprocess(after, scores[rows, cols], labels, page.image.shape[:2], c.nms_threshold, c.max_detections)
    svm = getattr(model, "svm_", None) is not None
    head = (
        f"Each proposal's pooled block goes through the fc layers ({' -> '.join(map(str, c.head.fc))}), which give "
        f"the {len(model.classes_)} classes and the background their probabilities (softmax) and each class its box "
        "deltas. " + ("Linear SVMs on the last fc layer's features score the classes instead. " if svm else "")
    )
    moves = (
        "Each kept box is moved by its class's deltas from the RoI head (tx, ty, tw, th). " + MOVES
        if getattr(c, "box_regression", True)
        else NO_MOVES
    )
    xlabel = f"best class {'SVM margin' if svm else 'probability'} of a proposal"
    _head_stages(page, model, proposals, scores, picked, after, detections, (head, xlabel, moves))
    return detections


def _explain_fast_rcnn(model, image, page: _Page, gt_boxes, top: int) -> tuple[Detections, np.ndarray]:
    import torch

    from rcnn.detectors.base import best_per_class

    c = model.config
    proposals = model._test_proposals(image)
    n = len(proposals)
    page.section(
        "Proposals",
        f"The proposer (`{c.proposals.method}`) gave the boxes; the first {c.test_proposals} are scored: "
        f"**{n}** here" + _holding(proposals, gt_boxes, ", holding") + f". Left: the first {min(top, n)} (the "
        "proposer's own ranking); right: how many of all of them cover each pixel.",
    )
    _outlines_and_heat(page, "proposals", proposals, top, (80, 255, 80), "proposals")

    with torch.inference_mode():
        fmap, factor = model._feature_map(image)
    tail = (
        "Every proposal's features come from its own region of this one map: one CNN run for the image where "
        f"R-CNN runs one per proposal ({n} here)."
    )
    _feature_map(page, fmap, factor, c.backbone, tail)
    if n == 0:
        page.text("No proposals: nothing to score or keep.")
        return Detections(), proposals

    scores, deltas = model._scores(image, proposals)

    def pool(k: int):
        rois = torch.from_numpy(proposals[k : k + 1] * factor).to(fmap.device)
        with torch.inference_mode():
            return model.pooler_(fmap, [rois])[0]

    _roi_pooling(page, model, proposals, scores, pool)
    rows, cols = best_per_class(scores, c.min_score)
    after = model._regress(proposals, deltas, rows, cols)
    return _roi_head_stages(page, model, proposals, scores, (rows, cols), after), proposals


def _explain_faster_rcnn(model, image, page: _Page, gt_boxes, top: int) -> tuple[Detections, np.ndarray]:
    import torch

    from rcnn.detectors.faster_rcnn import _features, anchor_groups
    from rcnn.features.pyramid import STRIDES

    c = model.config
    big, f = page.big, page.f
    with torch.inference_mode():
        fmap, size, factor = model._trunk(image)
        rois = model._rpn(fmap, size)
        boxes, scores = model._head(fmap, size, rois, factor) if len(rois[0]) else (None, None)
    proposals = (rois[0].cpu().numpy() / factor).astype(np.float32).reshape(-1, 4)
    anchors, objectness = rpn_maps(model, fmap, size)
    h, w, a = anchors.shape[:3]
    sizes, ratios = c.anchors.sizes, c.anchors.ratios
    if isinstance(fmap, dict):  # a feature pyramid: the page draws its stride-16 level
        maps = _features(fmap)
        levels = list(maps)
        sizes = anchor_groups(sizes, len(levels))[levels.index("1")]
        shapes = ", ".join(f"{m.shape[-2]} x {m.shape[-1]}" for m in maps.values())
        tail = (
            f"This model has a **feature pyramid** (`[backbone] fpn`): {len(levels)} maps of {fmap['1'].shape[1]} "
            f"channels ({shapes} cells, strides {', '.join(str(STRIDES[k]) for k in levels)} px), "
            "the RPN proposing from all of them and the RoI head pooling each proposal from the level its size "
            "maps to; this page draws the stride-16 level only (this map, its anchors and objectness)."
        )
        shown = fmap["1"]
    else:
        shown = fmap
        tail = "The RPN proposes from this map and the RoI head scores its proposals on it: one CNN run for the image."
    _feature_map(page, shown, factor, c.backbone, tail)

    peak = objectness.max(0)  # [h, w]
    i, j = np.unravel_index(int(peak.argmax()), peak.shape)
    page.section(
        "Anchors",
        f"At every cell of the map the RPN starts from the same **{a} anchors**: {len(sizes)} size(s) "
        f"({', '.join(map(str, sizes))} px in the rescaled image) x {len(ratios)} aspect ratio(s) (height / width "
        f"{', '.join(f'{r:g}' for r in ratios)}), centred on the cell's top-left corner (torchvision's grid). "
        f"{h} x {w} cells x {a} = **{h * w * a} anchors** on this image. The picture: the {a} anchors of the cell "
        f"(row {i}, column {j}; in white) whose best objectness is highest (next stage), in the image's pixels.",
    )
    out = draw_boxes(big, np.array([j, i, j + 1, i + 1], np.float32) * 16 / factor * f, (255, 255, 255), 1)
    for k, anchor in enumerate(anchors[i, j] / factor):
        out = draw_boxes(out, anchor * f, class_colour(k + 1), 1)
    page.picture("anchors.png", caption(out, f"{a} anchors at cell ({i}, {j}) of {h} x {w}"), "the anchors of one cell")

    page.section(
        "Objectness",
        f"The RPN's head (a 3 x 3 conv over the map, then 1 x 1 convs) gives each of the {h * w * a} anchors an "
        f"objectness (a probability, by its sigmoid) and 4 deltas that move it. The picture: the highest objectness "
        f"over the {a} anchors of each cell (black 0, yellow 1); highest {peak.max():.2f} at cell ({i}, {j}); "
        f"{int((peak >= 0.5).sum())} of the {h * w} cells have an anchor at 0.5 or more.",
    )
    heat = heat_overlay(big, _cell_heat(page, peak, factor), vmax=1.0)
    page.picture("objectness.png", heat, "highest objectness per cell")

    n, r = len(proposals), c.rpn
    page.section(
        "The RPN's proposals",
        f"Each anchor moved by its deltas; the best {r.pre_nms_top_n_test} by objectness kept, clipped to the image, "
        "the tiny ones dropped"
        + (f", those below objectness {r.score_threshold:g} too" if r.score_threshold > 0 else "")
        + f"; NMS at IoU {r.nms_threshold:g}; the best {r.post_nms_top_n_test} after it: **{n}** proposals "
        "(`model.propose(image)`)" + _holding(proposals, gt_boxes, ", holding") + f". Left: the first "
        f"{min(top, n)} (by objectness); right: how many of all of them cover each pixel.",
    )
    _outlines_and_heat(page, "proposals", proposals, top, (80, 255, 80), "RPN proposals")
    if n == 0:
        page.text("No proposals: nothing to score or keep.")
        return Detections(), proposals

    def pool(k: int):
        with torch.inference_mode():
            return model.net_.roi_heads.box_roi_pool(_features(fmap), [rois[0][k : k + 1]], [tuple(size)])[0]

    _roi_pooling(page, model, proposals, scores, pool)
    rows, cols = np.nonzero(scores >= c.min_score)
    return _roi_head_stages(page, model, proposals, scores, (rows, cols), boxes[rows, cols]), proposals


def _explain_localizer(model, image, page: _Page) -> Detections:
    p = model.predict([image])
    presence, probs, box = float(p["presence"][0]), p["class_probs"][0], p["boxes"][0]
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
        f"The image, resized to {c.input_size} x {c.input_size}, goes through {c.backbone} to one pooled feature; "
        f"from it: presence **{presence:.3f}** (threshold {c.presence_threshold:g}); class probabilities "
        + ", ".join(f"{name} {q:.3f}" for name, q in zip(model.classes_, probs))
        + f"; box ({', '.join(f'{v:.1f}' for v in box)}) in pixels.",
    )
    big, f = page.big, page.f
    page.picture(
        "box.png",
        caption(draw_boxes(big, box[None] * f, (255, 64, 64)), f"its box, whatever the presence ({presence:.2f})"),
        "the regressed box",
    )
    return model.detect(image)


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
