"""The evaluation report of a detector: AP tables, precision-recall curves, false-positive
analysis and a gallery, written to a folder.

`build_report(dataset, detections, out_dir)` works from detections alone, so experiments
can report re-fitted heads without running a model again; `report_model` runs a model
first. The folder gets:

- ``report.md``: AP per class under VOC07 (11-point), VOC (all-point) and COCO
  (AP@[.5:.95]) with means, COCO's twelve numbers, false-positive shares, the gallery, and
  the run's record (config, git commit, package versions, machine, seconds);
- ``results.json``: the same numbers (``voc07``, ``voc``: `VocResult.to_dict`; ``coco``:
  `evaluate_coco`; ``segm``: its mask numbers, when the detections and objects have masks; ``false_positives``: `error_summary`; ``gallery``; ``meta``);
- ``pr_curves.png``: precision against recall per class (VOC matching at IoU 0.5);
- ``false_positives.png``: share of localisation / confusion / background errors among the
  top-k false positives, overall and per class (R-CNN Fig. 4, after Hoiem et al.);
- ``gallery/*.jpg``: the best and worst images by F1 at the score threshold that maximises
  the F1 of the whole set (`best_f1_threshold`), with detections above it drawn over the
  ground truth (white), and the top-scoring false positives with their type.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from rcnn.cache import atomic_write, write_text
from rcnn.config import to_dict
from rcnn.datasets.core import Dataset, Detections
from rcnn.datasets.images import read_image
from rcnn.evaluation import evaluate_coco, evaluate_voc
from rcnn.evaluation.analysis import (
    ERROR_NAMES,
    ERROR_TYPES,
    best_f1_threshold,
    classify_false_positives,
    error_shares,
    error_summary,
    image_f1,
    rank_false_positives,
)
from rcnn.evaluation.coco import STAT_NAMES, has_masks
from rcnn.progress import progress
from rcnn.reports.draw import draw_detections, save_image

__all__ = ["build_report", "json_safe", "report_model", "run_record"]

PACKAGES = ("rcnn", "torch", "torchvision", "numpy", "opencv-contrib-python", "scikit-learn", "matplotlib")
ERROR_COLOURS = {"loc": "#4c72b0", "other": "#dd8452", "bg": "#55a868"}
LEGEND = {ERROR_TYPES[0]: "Loc", ERROR_TYPES[1]: "Other (confusion)", ERROR_TYPES[2]: "BG"}
GALLERY_SIDE = 640  # longest side of gallery images, pixels


def save_figure(fig, path, dpi: int) -> None:
    """Save a matplotlib figure atomically (`rcnn.cache.atomic_write`), in the format of the suffix."""
    with atomic_write(path) as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)


def run_record() -> dict:
    """Where and with what this ran: git commit (``+dirty`` with uncommitted changes to
    tracked files), package versions, Python, platform and CPU count."""
    root = Path(__file__).resolve().parents[2]
    commit = None
    try:

        def git(*args):
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
            )
            return done.stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        commit += "+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": commit,
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def json_safe(x):
    """JSON-safe copy: NaN and inf become None, numpy scalars and arrays plain Python, paths str."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or x < 0)):
        return "-"
    return f"{x:.{digits}f}"


# -- plots ----------------------------------------------------------------------------------


TITLE_SIZE = 10  # points
TITLE_LINE = 0.2  # inches a wrapped title line adds


def _wrap(text: str, width: float, fontsize: float = TITLE_SIZE) -> list[str]:
    """`text` in lines no wider than `width` inches at `fontsize` points (measured with
    matplotlib's default font; a single word wider than that keeps a line of its own)."""
    from matplotlib.textpath import TextPath

    def inches(line: str) -> float:
        return TextPath((0, 0), line, size=fontsize).get_extents().width / 72

    lines: list[str] = []
    for word in text.split():
        if lines and inches(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _grid(n: int, title: str, bottom: float = 0.35):
    """A figure of `n` panels, 3 x 2.6 inches each, under `title` (wrapped to the figure's
    width: one class's figure is 3 inches wide)."""
    from matplotlib.figure import Figure

    cols = min(5 if n > 12 else 4, n)
    rows = math.ceil(n / cols)
    width = 3.0 * cols
    lines = _wrap(title, width - 0.3)
    extra = TITLE_LINE * (len(lines) - 1)
    height = 2.6 * rows + bottom + 0.2 + extra
    fig = Figure(figsize=(width, height))
    # Fixed margins in inches: constrained layout took seconds per panel with 80 classes.
    fig.subplots_adjust(
        left=0.5 / width,
        right=1 - 0.1 / width,
        bottom=bottom / height,
        top=1 - (0.55 + extra) / height,
        wspace=0.3,
        hspace=0.55,
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle("\n".join(lines), fontsize=TITLE_SIZE, y=1 - 0.12 / height, va="top")
    return fig, axes[:n]


def pr_curves_figure(voc):
    """Precision against recall per class of a `VocResult` (raw curve and its monotone
    envelope), AP in each title: a matplotlib ``Figure``."""
    title = f"Precision (y) against recall (x) at IoU {voc.iou_threshold:g}; grey: raw, blue: interpolated"
    fig, axes = _grid(len(voc.classes), title)
    for ax, name, p, r, ap, npos in zip(axes, voc.classes, voc.precision, voc.recall, voc.ap, voc.npos):
        if len(p):
            ax.plot(r, p, color="#bbbbbb", lw=1)
            envelope = np.maximum.accumulate(p[::-1])[::-1]
            # Precision at recall in (r[i-1], r[i]] is envelope[i]: a step drawn from recall 0.
            ax.step(np.r_[0.0, r], np.r_[envelope[:1], envelope], where="pre", color="#4c72b0", lw=1.5)
        ax.set_title(f"{name}  AP {_fmt(float(ap), 3)}  (n={int(npos)})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return fig


def plot_pr_curves(voc, path) -> Path:
    """`pr_curves_figure` of a `VocResult`, written as PNG to `path`."""
    save_figure(pr_curves_figure(voc), path, dpi=100)
    return Path(path)


def false_positives_figure(named_types: dict[str, np.ndarray]):
    """Stacked areas of the share of loc / other / bg among the top-k false positives
    against k (log scale), one panel per entry of `named_types` (``{title: types [F]}`` in
    decreasing score): a matplotlib ``Figure``."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    title = "Share (%) of each false-positive type among the top-k false positives (x: k, log scale)"
    fig, axes = _grid(len(named_types), title, bottom=0.8)
    for ax, (name, types) in zip(axes, named_types.items()):
        ax.set_title(f"{name} ({len(types)} FP)", fontsize=9)
        ax.set_ylim(0, 100)
        ax.tick_params(labelsize=7)
        if len(types) == 0:
            continue
        k = np.arange(1, len(types) + 1)
        shares = error_shares(types) * 100
        ax.stackplot(k, shares.T, colors=[ERROR_COLOURS[ERROR_NAMES[t]] for t in ERROR_TYPES], step="post")
        ax.set_xscale("log")
        # Labels at 1, 2 and 5 of each decade, none on the minor ticks: matplotlib labels every
        # minor tick of a range under one decade (2x10^0, 3x10^0, ...), and they overlap.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(1, max(len(types), 2))
    handles = [Patch(color=ERROR_COLOURS[ERROR_NAMES[t]], label=LEGEND[t]) for t in ERROR_TYPES]
    fig.legend(handles=handles, loc="lower center", ncols=3, fontsize=8)
    return fig


def plot_false_positives(named_types: dict[str, np.ndarray], path) -> Path:
    """`false_positives_figure` of `named_types`, written as PNG to `path`."""
    save_figure(false_positives_figure(named_types), path, dpi=100)
    return Path(path)


# -- gallery ----------------------------------------------------------------------------------


def _shrunk(image: np.ndarray, boxes: list[np.ndarray]):
    """`image` scaled to at most `GALLERY_SIDE` pixels on its longest side, and boxes with it."""
    import cv2

    scale = min(1.0, GALLERY_SIDE / max(image.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, [np.asarray(b, np.float32).reshape(-1, 4) * scale for b in boxes]


def _draw(sample, dets: Detections, classes, path) -> str:
    image, (boxes, gt) = _shrunk(read_image(sample.image_path), [dets.boxes, sample.boxes])
    save_image(path, draw_detections(image, Detections(boxes, dets.scores, dets.labels, dets.masks), classes, gt))
    return path.name


def _safe(name: str) -> str:
    """A sample id as a file name part (COCO ids may hold folders)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-80:]


def _gallery(dataset, detections, types, threshold, out_dir: Path, per_kind: int, top_fp: int) -> dict:
    """Draw the best and worst images by F1 and the top-scoring false positives."""
    folder = out_dir / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    f = image_f1(dataset, detections, types, threshold)
    objects = np.array([len(s.labels) for s in dataset])
    # Best: high F1, then more objects; worst: low F1, then more errors.
    best = np.lexsort((-objects, -f["f1"]))[:per_kind]
    worst = np.lexsort((-(f["fp"] + f["fn"]), f["f1"]))[:per_kind]
    jobs = [("best", i) for i in best] + [("worst", i) for i in worst if i not in best]
    ranked = rank_false_positives(detections, types)
    n_fp = min(top_fp, len(ranked["id"]))
    index = {s.id: i for i, s in enumerate(dataset)}
    out = {"threshold": threshold, "best": [], "worst": [], "false_positives": []}
    for kind, i in progress(jobs, desc="gallery"):
        s = dataset[int(i)]
        d = detections.get(s.id, Detections())
        keep = d.scores >= threshold
        rank = len(out[kind]) + 1
        shown = Detections(d.boxes[keep], d.scores[keep], d.labels[keep])
        name = _draw(s, shown, dataset.classes, folder / f"{kind}_{rank:02d}_{_safe(s.id)}.jpg")
        counts = {k: int(f[k][i]) for k in ("tp", "fp", "fn")}
        out[kind].append({"file": f"gallery/{name}", "id": s.id, "f1": float(f["f1"][i]), **counts})
    for r in progress(range(n_fp), desc="false positives", unit="fp"):
        sid, row = ranked["id"][r], int(ranked["index"][r])
        s, d = dataset[index[sid]], detections[sid]
        kind = ERROR_NAMES[int(ranked["type"][r])]
        one = Detections(d.boxes[row : row + 1], d.scores[row : row + 1], d.labels[row : row + 1])
        name = _draw(s, one, dataset.classes, folder / f"fp_{r + 1:02d}_{kind}_{_safe(sid)}.jpg")
        name_of = dataset.classes[int(ranked["label"][r]) - 1]
        out["false_positives"].append(
            {"file": f"gallery/{name}", "id": sid, "class": name_of, "score": float(ranked["score"][r]), "type": kind}
        )
    return out


# -- the report -------------------------------------------------------------------------------


def build_report(
    dataset: Dataset,
    detections: dict[str, Detections],
    out_dir,
    *,
    title: str = "Detection report",
    extra: dict | None = None,
    config: dict | None = None,
    timings: dict | None = None,
    gallery: int = 6,
    top_false_positives: int = 12,
    score_threshold: float | None = None,
) -> dict:
    """Write the report of `detections` (``{sample id: Detections}``) on `dataset` to
    `out_dir` (see the module docstring) and return what ``results.json`` holds.

    `extra`: anything JSON-able the caller wants recorded (an experiment's settings), shown
    as a table; `config`: the detector's config as a dict; `timings`: seconds the caller
    measured (``{"detect_seconds": ...}``), recorded with the report's own. `gallery`: best
    and worst images drawn; `top_false_positives`: top-scoring false positives drawn (both 0:
    no gallery, and images are never read); `score_threshold`: the gallery's cut (None: the best-F1 one).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    voc07 = evaluate_voc(dataset, detections, 0.5, use_07_metric=True)
    voc = evaluate_voc(dataset, detections, 0.5)
    coco = evaluate_coco(dataset, detections)
    segm = evaluate_coco(dataset, detections, "segm") if has_masks(dataset, detections) else None
    types = classify_false_positives(dataset, detections)
    errors = error_summary(dataset, detections, types)

    plot_pr_curves(voc, out_dir / "pr_curves.png")
    ranked = rank_false_positives(detections, types)
    panels = {"all classes": ranked["type"]}
    for label, name in enumerate(dataset.classes, 1):
        panels[name] = ranked["type"][ranked["label"] == label]
    plot_false_positives(panels, out_dir / "false_positives.png")

    threshold = best_f1_threshold(dataset, detections, types) if score_threshold is None else float(score_threshold)
    shown = None
    if gallery > 0 or top_false_positives > 0:
        shown = _gallery(dataset, detections, types, threshold, out_dir, gallery, top_false_positives)

    objects = np.zeros(dataset.num_classes, np.int64)
    for s in dataset:
        objects += np.bincount(s.labels, minlength=dataset.num_classes + 1)[1:]
    n_dets = np.zeros(dataset.num_classes, np.int64)
    for d in detections.values():
        n_dets += np.bincount(d.labels, minlength=dataset.num_classes + 1)[1:]
    meta = run_record()
    meta["seconds"] = {**(timings or {}), "report_seconds": time.perf_counter() - start}
    results = json_safe(
        {
            "title": title,
            "images": len(dataset),
            "classes": list(dataset.classes),
            "objects": dict(zip(dataset.classes, objects)),
            "detections": dict(zip(dataset.classes, n_dets)),
            "voc07": voc07.to_dict(),
            "voc": voc.to_dict(),
            "coco": coco,
            **({"segm": segm} if segm is not None else {}),
            "false_positives": errors,
            "gallery": shown,
            "extra": extra,
            "config": config,
            "meta": meta,
        }
    )
    write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    write_text(out_dir / "report.md", _markdown(results))
    return results


def _markdown(r: dict) -> str:
    classes = r["classes"]
    lines = [
        f"# {r['title']}",
        "",
        f"{r['images']} images, {sum(r['objects'].values())} objects, {sum(r['detections'].values())} detections.",
        "",
    ]
    if r["extra"]:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v) if not isinstance(v, str) else v} |" for k, v in r["extra"].items()]
        lines += [""]
    lines += [
        "## Average precision",
        "",
        "VOC07: 11-point AP at IoU 0.5; VOC: all-point AP at IoU 0.5 (VOC2010+); "
        "COCO: AP averaged over IoU 0.50:0.05:0.95 (101-point). Difficult boxes are ignored.",
        "",
        "| class | objects | detections | VOC07 AP | VOC AP | COCO AP |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in classes:
        lines.append(
            f"| {c} | {r['objects'][c]} | {r['detections'][c]} | {_fmt(r['voc07']['per_class'][c])} | "
            f"{_fmt(r['voc']['per_class'][c])} | {_fmt(r['coco']['per_class'][c])} |"
        )
    lines.append(
        f"| **mean** | {sum(r['objects'].values())} | {sum(r['detections'].values())} | "
        f"**{_fmt(r['voc07']['mAP'])}** | **{_fmt(r['voc']['mAP'])}** | **{_fmt(r['coco']['AP'])}** |"
    )
    lines += [
        "",
        "COCO summary:",
        "",
        "| " + " | ".join(STAT_NAMES) + " |",
        "|" + "---:|" * len(STAT_NAMES),
        "| " + " | ".join(_fmt(r["coco"][k], 3) for k in STAT_NAMES) + " |",
        *(["| " + " | ".join(_fmt(r["segm"][k], 3) for k in STAT_NAMES) + " | (masks)"] if "segm" in r else []),
        "",
        "![precision-recall curves](pr_curves.png)",
        "",
    ]

    fp = r["false_positives"]
    lines += [
        "## False positives",
        "",
        "Each false positive (VOC matching at IoU 0.5) is a localisation error (loc: IoU 0.1 to 0.5 with an "
        "object of its class, or a duplicate detection), a confusion with another class (other: IoU >= 0.1 with "
        "an object of another class) or background (bg). Shares among the top-k false positives by score "
        "(all classes pooled by score, then per class):",
        "",
        "| | FP | loc | other | bg | top-k shares (loc / other / bg) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, s in [("all classes", fp["overall"])] + list(fp["per_class"].items()):
        at = ", ".join(f"k={k}: {v['loc']:.2f}/{v['other']:.2f}/{v['bg']:.2f}" for k, v in s["share_at_top_k"].items())
        cnt = s["counts"]
        lines.append(f"| {name} | {s['false_positives']} | {cnt['loc']} | {cnt['other']} | {cnt['bg']} | {at} |")
    lines += ["", "![false-positive types](false_positives.png)", ""]

    g = r["gallery"]
    if g:
        cut = "+inf (no detections)" if g["threshold"] is None else f"{g['threshold']:.4g}"
        lines += [
            "## Gallery",
            "",
            f"Images ranked by F1 over their detections scoring >= {cut} (the threshold that "
            "maximises F1 over the whole set; matching as VOC at IoU 0.5). Ground truth in white.",
            "",
        ]
        for kind in ("best", "worst"):
            if g[kind]:
                lines += [
                    f"**{kind.capitalize()} images**",
                    "",
                    "| image | F1 | TP | FP | FN |",
                    "|---|---:|---:|---:|---:|",
                ]
                lines += [
                    f"| [{e['id']}]({e['file']}) | {e['f1']:.2f} | {e['tp']} | {e['fp']} | {e['fn']} |" for e in g[kind]
                ]
                lines += [""]
        if g["false_positives"]:
            lines += [
                "**Top-scoring false positives**",
                "",
                "| # | image | class | score | type |",
                "|---:|---|---|---:|---|",
            ]
            lines += [
                f"| {i} | [{e['id']}]({e['file']}) | {e['class']} | {e['score']:.3f} | {e['type']} |"
                for i, e in enumerate(g["false_positives"], 1)
            ]
            lines += [""]

    m = r["meta"]
    lines += [
        "## Run",
        "",
        f"- git commit: {m['git_commit'] or 'unknown'}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        f"- machine: {m['platform']}, Python {m['python']}, {m['cpu_count']} CPUs",
        "- seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in m["seconds"].items()),
    ]
    if r["config"]:
        lines += ["", "Config:", "", "```json", json.dumps(r["config"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def report_model(
    model,
    dataset: Dataset,
    out_dir,
    *,
    title: str | None = None,
    extra: dict | None = None,
    use_cache: bool = True,
    **kwargs,
) -> dict:
    """Run fitted `model` (`rcnn.detectors.RCNN`) over `dataset`, then `build_report` with
    its config and the detection time; `kwargs` go to `build_report`."""
    start = time.perf_counter()
    detections = model.detect_dataset(dataset, use_cache=use_cache)
    seconds = time.perf_counter() - start
    key = "detect_seconds_with_caches" if use_cache else "detect_seconds"  # cached features take no CNN time
    timings = {key: seconds, f"{key}_per_image": seconds / max(len(dataset), 1)}
    return build_report(
        dataset,
        detections,
        out_dir,
        title=title or "R-CNN detection report",
        extra=extra,
        config=to_dict(model.config),
        timings=timings,
        **kwargs,
    )
