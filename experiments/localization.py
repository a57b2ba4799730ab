"""Localisation by regression, the road to R-CNN: the localiser on every synthetic preset in
order, then beside R-CNN on the multi-object set, and a small sweep of the box loss weight.

Config ``[experiment]``: ``presets`` (in order), ``images``, ``size``, ``seed`` (each
preset's data, made under ``data/localization/PRESET``), ``threads`` (torch's intra-op
threads), ``lambda_preset`` and ``lambdas`` (the box-weight sweep), ``gallery`` (test images
drawn per preset); ``[localizer]``: the localiser's config; ``[rcnn]``: overrides merged
into ``experiments/configs/demo.toml`` for the R-CNN beside it.

    .venv/bin/python experiments/localization.py      # make experiment-localization
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import CONFIGS, ROOT, Report, fit_or_load, table  # noqa: E402

from rcnn.boxes import box_iou  # noqa: E402
from rcnn.config import load_toml, to_dict  # noqa: E402
from rcnn.datasets import load_dataset  # noqa: E402
from rcnn.datasets.core import Detections  # noqa: E402
from rcnn.datasets.images import read_image  # noqa: E402
from rcnn.datasets.synthetic import PRESETS, make_synthetic  # noqa: E402
from rcnn.detectors import Localizer, load_config  # noqa: E402
from rcnn.detectors.localizer import targets  # noqa: E402
from rcnn.evaluation import evaluate_voc  # noqa: E402
from rcnn.reports.draw import caption, draw_detections, image_grid, save_image  # noqa: E402
from rcnn.reports.report import save_figure  # noqa: E402

COLUMNS = [
    ("preset", "preset"),
    ("class_accuracy", "class accuracy"),
    ("mean_iou", "mean IoU"),
    ("iou50", "IoU >= 0.5"),
    ("presence_accuracy", "presence accuracy"),
    ("mAP50", "VOC mAP@0.5"),
    ("fit_seconds", "fit s", 0),
]
SWEEP_COLUMNS = [
    ("box_weight", "lambda", 1),
    ("class_accuracy", "class accuracy"),
    ("mean_iou", "mean IoU"),
    ("iou50", "IoU >= 0.5"),
    ("mAP50", "VOC mAP@0.5"),
]
VERSUS_COLUMNS = [
    ("detector", "detector"),
    ("mAP50", "VOC mAP@0.5"),
    ("recall", "recall@0.5 (all objects)"),
    ("recall_per_image", "mean recall per image"),
    ("found_per_image", "objects found / image", 2),
    ("objects_per_image", "objects / image", 2),
    ("fit_seconds", "fit s", 0),
]


def localizer_metrics(model: Localizer, test) -> tuple[dict, dict]:
    """Class accuracy, IoU of the box with the nearest object (mean, share >= 0.5) over the
    test images that hold an object; presence accuracy over all (None when every image has
    one); VOC mAP@0.5 of its detections."""
    p = model.predict([s.image_path for s in test])
    correct, ious, presence_ok = [], [], []
    for i, s in enumerate(test):
        present, label, _ = targets(s)
        presence_ok.append((p["presence"][i] >= model.config.presence_threshold) == present)
        if present:
            correct.append(int(np.argmax(p["class_probs"][i])) + 1 == label)
            ious.append(float(box_iou(p["boxes"][i : i + 1], s.boxes).max()))
    detections = model.detect_dataset(test)
    has_empty = any(len(s.boxes) == 0 for s in test)
    ious = np.array(ious)
    return {
        "class_accuracy": float(np.mean(correct)),
        "mean_iou": float(ious.mean()),
        "iou50": float((ious >= 0.5).mean()),
        "presence_accuracy": float(np.mean(presence_ok)) if has_empty else None,
        "mAP50": evaluate_voc(test, detections, 0.5).mAP,
        "images": len(test),
        "with_object": len(ious),
    }, detections


def object_recall(test, detections: dict[str, Detections], min_score: float) -> dict:
    """Objects found (a detection of its class scoring >= `min_score` at IoU >= 0.5, each
    detection finding one object) overall and per image, over the images with objects."""
    found_total, objects, per_image, found_counts = 0, 0, [], []
    for s in test:
        if len(s.boxes) == 0:
            continue
        d = detections[s.id]
        keep = d.scores >= min_score
        boxes, labels = d.boxes[keep], d.labels[keep]
        used, found = set(), 0
        if len(boxes):
            iou = box_iou(s.boxes, boxes)
            for g in range(len(s.boxes)):
                for j in np.argsort(-iou[g]):
                    if iou[g, j] < 0.5:
                        break
                    if j not in used and labels[j] == s.labels[g]:
                        used.add(j)
                        found += 1
                        break
        found_total += found
        objects += len(s.boxes)
        per_image.append(found / len(s.boxes))
        found_counts.append(found)
    return {
        "recall": found_total / max(objects, 1),
        "recall_per_image": float(np.mean(per_image)),
        "found_per_image": float(np.mean(found_counts)),
        "objects_per_image": objects / max(len(per_image), 1),
    }


def gallery_row(test, detections, classes, n: int, label: str, min_score: float = 0.0) -> list[np.ndarray]:
    """The first `n` test images with their detections (and the ground truth, white), the
    first tile captioned with `label`."""
    tiles = []
    for k, s in enumerate(test.samples[:n]):
        d = detections[s.id]
        keep = d.scores >= min_score
        drawn = draw_detections(
            read_image(s.image_path), Detections(d.boxes[keep], d.scores[keep], d.labels[keep]), classes, s.boxes
        )
        tiles.append(caption(np.kron(drawn, np.ones((2, 2, 1), np.uint8)), label if k == 0 else s.id))
    return tiles


def preset_plot(path: Path, rows: list[dict]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    for key, label in (
        ("mean_iou", "mean IoU of the box"),
        ("iou50", "share IoU >= 0.5"),
        ("mAP50", "VOC mAP@0.5"),
        ("class_accuracy", "class accuracy"),
    ):
        ax.plot(x, [np.nan if r[key] is None else r[key] for r in rows], marker="o", label=label)
    ax.set_xticks(x, [r["preset"] for r in rows], rotation=20)
    ax.set(ylim=(0, 1.02), ylabel="test", title="The localiser along the road to R-CNN")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def run(args) -> None:
    import torch

    exp = load_toml(args.config)["experiment"]
    torch.set_num_threads(int(exp.get("threads", 0)) or torch.get_num_threads())
    settings = load_toml(args.config)
    report = Report(args, exp["title"], exp.get("intro", ""))
    loc_values = settings["localizer"]
    rows, galleries, data = [], [], {}
    for name in exp["presets"]:
        root = ROOT / "data" / "localization" / name
        make_synthetic(root, exp["images"], exp["seed"], exp["size"], preset=name)
        train, test = load_dataset(root, split="train"), load_dataset(root, split="test")
        data[name] = (train, test)
        model, fit = fit_or_load(load_config(None, loc_values), train)
        metrics, detections = localizer_metrics(model, test)
        rows.append({"preset": name, **metrics, "fit_seconds": fit["fit_seconds"]})
        galleries += gallery_row(test, detections, model.classes_, exp["gallery"], name)
        print(
            f"   {name:12s} class {metrics['class_accuracy']:.3f}  IoU {metrics['mean_iou']:.3f}  "
            f"IoU>=.5 {metrics['iou50']:.3f}  mAP {metrics['mAP50']:.3f}  ({fit['fit_seconds']:.0f} s)"
        )
        if name == "multi":
            multi = (model, fit, detections)
    preset_plot(report.out / "presets.png", rows)
    save_image(report.out / "gallery.png", image_grid(galleries, exp["gallery"]))

    sweep = []
    train, test = data[exp["lambda_preset"]]
    for lam in exp["lambdas"]:
        model, fit = fit_or_load(load_config(None, [loc_values, {"box_weight": lam}]), train)
        metrics, _ = localizer_metrics(model, test)
        sweep.append({"box_weight": lam, **metrics})
        print(f"   lambda {lam:5.2f}  IoU {metrics['mean_iou']:.3f}  class {metrics['class_accuracy']:.3f}")

    versus = []
    if "multi" in data:
        train, test = data["multi"]
        model, fit, detections = multi
        versus.append(
            {
                "detector": "localiser",
                "mAP50": evaluate_voc(test, detections, 0.5).mAP,
                **object_recall(test, detections, model.draw_threshold),
                "fit_seconds": fit["fit_seconds"],
            }
        )
        rcnn_config = load_config(CONFIGS / "demo.toml", settings.get("rcnn"))
        rcnn, rfit = fit_or_load(rcnn_config, train)
        rdets = rcnn.detect_dataset(test)
        versus.append(
            {
                "detector": "R-CNN",
                "mAP50": evaluate_voc(test, rdets, 0.5).mAP,
                **object_recall(test, rdets, rcnn.draw_threshold),
                "fit_seconds": rfit["fit_seconds"],
            }
        )
        print(
            f"   multi: localiser mAP {versus[0]['mAP50']:.3f} recall {versus[0]['recall']:.3f}; "
            f"R-CNN mAP {versus[1]['mAP50']:.3f} recall {versus[1]['recall']:.3f}"
        )
        tiles = gallery_row(test, detections, model.classes_, exp["gallery"], "localiser")
        tiles += gallery_row(test, rdets, rcnn.classes_, exp["gallery"], "R-CNN", rcnn.draw_threshold)
        save_image(report.out / "multi.png", image_grid(tiles, exp["gallery"]))

    loc = load_config(None, loc_values)
    report.lines += [
        "## The localiser on each preset",
        "",
        f"Localiser: {loc.backbone} ({'ImageNet weights, ' if loc.weights == 'auto' else ''}fine-tuned end to end), "
        f"{loc.input_size} px input, {loc.epochs} epochs of {loc.optimizer} (lr {loc.lr}), box loss {loc.box_loss} "
        f"with lambda {loc.box_weight}; presence threshold {loc.presence_threshold}.",
        "",
        "Presets: " + "; ".join(f"**{n}**: {PRESETS[n].text}" for n in exp["presets"]) + ".",
        "",
        "Class accuracy and IoU are over the test images that hold an object (the IoU of the one box with the "
        "nearest object: on `multi` any object counts as the target); presence accuracy over every test image, "
        "where some hold no object (`absent`, and `multi`, 0 to 5 objects); VOC mAP@0.5 of its detections (at most "
        "one per image, scored presence x class probability).",
        "",
        *table(rows, COLUMNS),
        "![mean IoU, IoU >= 0.5, mAP and class accuracy across the presets](presets.png)",
        "",
        f"Predicted boxes on the first {exp['gallery']} test images of each preset (ground truth white):",
        "",
        "![gallery](gallery.png)",
        "",
        f"## The box loss weight (lambda), on `{exp['lambda_preset']}`",
        "",
        *table(sweep, SWEEP_COLUMNS),
    ]
    if versus:
        rc = rcnn_config
        report.lines += [
            "## Many objects: the localiser beside R-CNN (`multi`)",
            "",
            f"R-CNN: `experiments/configs/demo.toml` made faster ({rc.proposals.method}, {rc.proposals.max_boxes} "
            f"windows per image, {rc.features.crop_size} px crops, no fine-tuning, SVMs and box regression), trained on "
            "the same images. Recall: ground-truth objects matched by a detection of their class at IoU >= 0.5 scoring "
            f"at least the detector's drawing threshold (localiser {multi[0].draw_threshold}: every box it gives; "
            f"R-CNN {rcnn.draw_threshold}: the SVM margin).",
            "",
            *table(versus, VERSUS_COLUMNS),
            "One box per image finds at most one object: its recall is bounded by 1 / objects per image. "
            "Proposals, a score per region and NMS lift that bound.",
            "",
            "![localiser (top) and R-CNN (bottom) on the same test images](multi.png)",
            "",
        ]
    report.results = {
        "presets": rows,
        "lambda_sweep": sweep,
        "versus": versus,
        "localizer_config": to_dict(loc),
        **({"rcnn_config": to_dict(rcnn_config)} if versus else {}),
    }
    report.write()


def main(argv=None) -> int:
    return harness.script_main("localization", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
