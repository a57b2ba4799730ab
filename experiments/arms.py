"""Experiments made of arms: detectors that differ from a base config by a few settings.

The config's ``[experiment]`` table has ``title``, ``intro`` (markdown), ``overrides`` (merged
into every arm's detector config) and optionally ``report_arm`` (that arm also gets the full
evaluation report of `rcnn.reports.build_report`: per-class AP, PR curves, false-positive
analysis, gallery). Each ``[[arms]]`` has a ``name``, detector ``overrides`` and optional
test-time settings ``test = {boxes = 500, nms_threshold = 0.3}``. Arms whose detector configs
are equal share one fitted model; arms with equal features share the feature cache.

    .venv/bin/python experiments/run.py ablations [--data PATH]
    .venv/bin/python experiments/run.py ablations --replot     # map.png again from results.json
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness import Report, TestSet, bar_plot, base_summary, detector_config, fit_or_load, table, targets

from rcnn.config import load_toml, to_dict
from rcnn.reports.report import build_report

COLUMNS = [
    ("arm", "arm"),
    ("mAP50", "VOC mAP@0.5"),
    ("mAP50_voc07", "VOC07 mAP"),
    ("coco_AP", "COCO AP"),
    ("coco_AP50", "COCO AP50"),
    ("boxes_per_image", "boxes/img", 0),
    ("fit_seconds", "fit s", 0),
    ("seconds_per_image", "detect s/img", 2),
]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(args) -> None:
    spec = load_toml(args.config)
    exp, arms = spec["experiment"], spec.get("arms", [])
    if not arms:
        raise SystemExit(f"{args.config}: no [[arms]]")
    report = Report(args, exp["title"], exp.get("intro", ""))
    panels = {}
    for target in targets(args):
        print(f"== {args.name} on {target.name}")
        report.lines += [f"## {target.name}", "", base_summary(target), ""]
        rows, results = [], {}
        for arm in arms:
            config = detector_config(target.base, exp.get("overrides"), arm.get("overrides"))
            print(f"-- {arm['name']}")
            model, fit = fit_or_load(config, target.train)
            test = arm.get("test", {})
            proposals = dict(config.proposals)
            if "boxes" in test and test["boxes"] > proposals.get("max_boxes", 0):
                proposals["max_boxes"] = test["boxes"]
            testset = TestSet(model, target.test, proposals)
            metrics, detections = testset.score(
                test.get("boxes"), test.get("nms_threshold"), test.get("score_threshold")
            )
            print(f"   VOC mAP@0.5 {metrics['mAP50']:.3f}  COCO AP {metrics['coco_AP']:.3f}")
            rows.append({"arm": arm["name"], **metrics, "fit_seconds": fit.get("fit_seconds")})
            results[arm["name"]] = {"metrics": metrics, "fit": fit, "test": test, "config": to_dict(config)}
            if arm["name"] == exp.get("report_arm"):
                folder = report.out / f"{target.name}-{slug(arm['name'])}"
                build_report(
                    target.test,
                    detections,
                    folder,
                    title=f"{arm['name']} on {target.name} test",
                    config=to_dict(config),
                    extra={"experiment": args.name, "arm": arm["name"]},
                )
                report.lines += [
                    f"Full evaluation report of *{arm['name']}* (per-class AP, PR curves, false-positive "
                    f"types, gallery): [{folder.name}/report.md]({folder.name}/report.md).",
                    "",
                ]
        report.lines += table(rows, COLUMNS)
        report.lines += ["Per-class VOC AP@0.5:", ""]
        classes = list(target.test.classes)
        per_class = [{"arm": r["arm"], **r["per_class_AP50"]} for r in rows]
        report.lines += table(per_class, [("arm", "arm")] + [(c, c) for c in classes])
        report.results[target.name] = results
        panels[target.name] = {r["arm"]: r["mAP50"] for r in rows}
    plot = bar_plot(report.out / "map.png", panels, "VOC mAP@0.5 (test)")
    report.lines += [f"![VOC mAP@0.5 per arm]({plot.name})", ""]
    report.lines += [
        "fit s: seconds to fit the arm's detector the first time (proposals, fine-tuning, features and "
        "heads, with whatever was cached then); detect s/img: proposals + warp and CNN (the cached "
        "extraction's time, scaled to the boxes used) + heads and NMS, per test image.",
        "",
    ]
    report.write()


def replot(out: Path) -> Path:
    """Draw `out`/map.png again from `out`/results.json (the arms' mAP per dataset), training nothing."""
    data = json.loads((out / "results.json").read_text())
    panels = {
        name: {arm: v["metrics"]["mAP50"] for arm, v in arms.items()} for name, arms in data.items() if name != "meta"
    }
    return bar_plot(out / "map.png", panels, "VOC mAP@0.5 (test)")
