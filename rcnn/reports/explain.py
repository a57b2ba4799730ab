"""What each stage of a detector did on one image: `explain(model, image, out_dir)` writes
``index.md`` with a PNG per stage beside it (`rcnn explain`).

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
from rcnn.reports.draw import caption, draw_boxes, draw_detections, draw_moves, heat_overlay, image_grid, save_image

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


def _scaled(image: np.ndarray, side: int = 480) -> tuple[np.ndarray, float]:
    """`image` enlarged (nearest pixels) so its longer side is about `side`, and the factor."""
    f = max(1, int(side // max(image.shape[:2])))
    return (np.kron(image, np.ones((f, f, 1), np.uint8)) if f > 1 else image), float(f)


class _Page:
    """index.md's lines and the pictures written beside it."""

    def __init__(self, out: Path, title: str):
        self.out, self.lines, self.pictures = out, [f"# {title}", ""], []

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
    warped crops in the grid. Returns ``{"index": path, "pictures": [names], "detections"}``."""
    from rcnn.detectors.localizer import Localizer
    from rcnn.detectors.rcnn import RCNN

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if gt_boxes is not None:
        gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    page = _Page(out, f"What {type(model).__name__} did on {name}")
    if isinstance(model, RCNN):
        detections = _explain_rcnn(model, image, page, gt_boxes, top, crops)
    elif isinstance(model, Localizer):
        detections = _explain_localizer(model, image, page)
    else:
        page.text(
            f"This page knows the stages of R-CNN and of the localiser; for a {type(model).__name__} it shows "
            "the final detections only."
        )
        detections = model.detect(image)
    _final(model, image, detections, page, gt_boxes, gt_labels)
    return {"index": page.write(), "pictures": page.pictures, "detections": detections}


def _explain_rcnn(model, image, page: _Page, gt_boxes, top: int, n_crops: int) -> Detections:
    from rcnn.features.warp import warp_crops
    from rcnn.proposals import SlidingWindowConfig, make_proposer

    c = model.config
    size = image.shape[:2]
    big, f = _scaled(image)

    proposals = np.asarray(make_proposer(c.proposals)(image), np.float32).reshape(-1, 4)
    n = len(proposals)
    page.text(
        "## 1. Proposals",
        "",
        f"The proposer (`{c.proposals.method}`) gave **{n}** boxes"
        + (
            f"; they hold {_recall(proposals, gt_boxes):.0%} of the ground-truth objects at IoU >= 0.5"
            if gt_boxes is not None and len(gt_boxes)
            else ""
        )
        + f". Left: the first {min(top, n)} "
        "(the proposer's own ranking); right: how many of all of them cover each pixel.",
    )
    page.picture(
        "proposals.png", draw_boxes(big, proposals[:top] * f, (80, 255, 80), 1), f"the first {min(top, n)} proposals"
    )
    page.picture(
        "proposals_heat.png", heat_overlay(big, coverage(proposals * f, big.shape[:2])), "coverage of all proposals"
    )

    windows_config = SlidingWindowConfig(max_boxes=max(n, 1))
    windows = np.asarray(make_proposer(windows_config)(image), np.float32).reshape(-1, 4)
    same = c.proposals.method == "sliding_window"
    page.text(
        "## 2. The same number of sliding windows",
        "",
        f"{len(windows)} windows of a regular grid (scales {', '.join(f'{s:g}' for s in windows_config.scales)} of "
        f"the image side, aspect ratios {', '.join(f'{a:g}' for a in windows_config.aspect_ratios)})"
        + (
            f", holding {_recall(windows, gt_boxes):.0%} of the objects at IoU >= 0.5"
            if gt_boxes is not None and len(gt_boxes)
            else ""
        )
        + ": they cover the image evenly, wherever the objects are"
        + ("." if same else "; compare the heat maps: proposals gather where the image has objects.")
        + (" (This model's proposals are sliding windows already.)" if same else ""),
    )
    page.picture(
        "windows.png",
        draw_boxes(big, windows[:top] * f, (80, 160, 255), 1),
        f"the first {min(top, len(windows))} sliding windows",
    )
    page.picture("windows_heat.png", heat_overlay(big, coverage(windows * f, big.shape[:2])), "coverage of the windows")
    if n == 0:
        page.text("No proposals: nothing to warp, score or keep.")
        return Detections()

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
    page.text(
        "## 3. Warped crops and their scores",
        "",
        f"Every proposal is cut out with {fc.padding} px of context, warped to {fc.crop_size} x {fc.crop_size} "
        f"px whatever its shape, and run through the CNN ({fc.backbone}, {model.extractor_.feature_dim}-d "
        f"features); the {c.classifier} scores each class. The {len(shown)} best-scoring crops, with their best "
        "class and score:",
    )
    page.picture("crops.png", image_grid(tiles, 8), "warped crops")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.hist(best, bins=40, color="#4c72b0")
    ax.axvline(c.min_score, color="#c44e52", label=f"score threshold {c.min_score:g}")
    ax.axvline(model.draw_threshold, color="#55a868", ls="--", label=f"drawn from {model.draw_threshold:g}")
    ax.set(
        xlabel="best class score of a proposal", ylabel="proposals", yscale="log", title="Scores before the threshold"
    )
    ax.legend(fontsize=8)
    rows, cols = np.nonzero(scores >= c.min_score)
    page.text(
        "## 4. Scores before the threshold",
        "",
        f"{n} proposals x {len(model.classes_)} classes = {scores.size} scores; {len(rows)} reach the threshold "
        f"{c.min_score:g} and go on (a proposal may go on for several classes).",
    )
    page.figure("scores.png", fig, "histogram of scores")

    labels = cols.astype(np.int64) + 1
    before = proposals[rows]
    after = before
    if model.regressor_ is not None and len(rows):
        after = model.regressor_.predict(features[rows], before, labels)
    pick = np.argsort(-scores[rows, cols], kind="stable")[:12]
    page.text(
        "## 5. Box regression",
        "",
        (
            f"Each kept box is moved by its class's ridge regressor (Girshick et al.: tx, ty, tw, th from the crop's "
            f"features). The {len(pick)} best: before (white), after (red), an arrow between centres."
            if model.regressor_ is not None
            else "This model has no box regression (`box_regression = false`): the boxes stay as proposed."
        ),
    )
    page.picture(
        "regression.png", draw_moves(big, before[pick] * f, after[pick] * f), "boxes before and after regression"
    )

    detections = model.predict(proposals, features, size)
    kept = Detections(after, scores[rows, cols], labels)
    page.text(
        "## 6. Non-maximum suppression",
        "",
        f"{len(kept)} candidates overlap heavily (left); per class, NMS at IoU {c.nms_threshold:g} keeps the "
        f"best-scoring box of each overlapping group and the best {c.max_detections} overall: {len(detections)} "
        "are left (right).",
    )
    left = caption(draw_boxes(big, after * f, (255, 200, 0), 1), f"before NMS: {len(kept)}")
    right = caption(
        draw_detections(big, _scaled_detections(detections, f), model.classes_), f"after NMS: {len(detections)}"
    )
    page.picture("nms.png", image_grid([left, right], 2), "before and after NMS")
    return detections


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
    big, f = _scaled(image)
    page.picture(
        "box.png",
        caption(draw_boxes(big, box[None] * f, (255, 64, 64)), f"its box, whatever the presence ({presence:.2f})"),
        "the regressed box",
    )
    return model.detect(image)


def _scaled_detections(d: Detections, f: float) -> Detections:
    return Detections(d.boxes * f, d.scores, d.labels)


def _final(model, image, detections: Detections, page: _Page, gt_boxes, gt_labels) -> None:
    big, f = _scaled(image)
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
