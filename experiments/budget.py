"""Test-time budget: one detector scored with fewer or more Selective Search boxes per test
image (mAP against seconds per image), with each NMS threshold, and under each test rule
(the fixed score threshold, or R-CNN's per-class thresholds over the set, `CommonConfig`).

Config ``[experiment]``: ``budgets`` (test boxes per image), ``nms_thresholds``,
``nms_boxes`` (boxes per image for the NMS and test-rule tables; default the detector's
own), ``overrides`` (merged into each dataset's base detector config).

    .venv/bin/python experiments/run.py budget [--data PATH]
"""

from __future__ import annotations

from harness import Report, TestSet, base_summary, detector_config, fit_or_load, line_plot, table, targets

from rcnn.config import load_toml, to_dict

BOX_COLUMNS = [
    ("k", "boxes/img (k)"),
    ("boxes_per_image", "mean boxes", 0),
    ("mAP50", "VOC mAP@0.5"),
    ("coco_AP", "COCO AP"),
    ("recall@0.5", "recall@0.5"),
    ("seconds_per_image", "s/img", 2),
    ("proposal_s", "proposals s/img"),
    ("feature_s", "CNN s/img"),
    ("heads_s", "heads+NMS s/img"),
]
RULE_COLUMNS = [
    ("rule", "test rule"),
    ("detections_per_image", "detections/img", 1),
    ("pr_end_recall", "PR curve ends: recall"),
    ("pr_end_precision", "precision there"),
    ("mAP50", "VOC mAP@0.5"),
    ("mAP50_voc07", "VOC07 mAP"),
    ("coco_AP", "COCO AP"),
    ("coco_AP50", "COCO AP50"),
]
# (row name, TestSet.score keywords): the fixed threshold, no threshold at all, R-CNN's rule
RULES = [
    ("fixed threshold (SVM margin -1), NMS, best 100", {"test_rule": "threshold"}),
    ("no threshold, NMS, best 100", {"test_rule": "threshold", "score_threshold": float("-inf")}),
    ("rcnn_test.m: best 100 per class, ~40 per class per image over the set, NMS (default)", {"test_rule": "rcnn"}),
]
NMS_COLUMNS = [
    ("nms", "NMS IoU", 2),
    ("mAP50", "VOC mAP@0.5"),
    ("mAP50_voc07", "VOC07 mAP"),
    ("coco_AP", "COCO AP"),
    ("coco_AP50", "COCO AP50"),
    ("coco_AP75", "COCO AP75"),
]


def run(args) -> None:
    exp = load_toml(args.config)["experiment"]
    budgets = sorted(int(k) for k in exp["budgets"])
    report = Report(args, exp["title"], exp.get("intro", ""))
    box_panels, time_panels, nms_panels = {}, {}, {}
    for target in targets(args):
        print(f"== {args.name} on {target.name}")
        config = detector_config(target.base, exp.get("overrides"))
        model, fit = fit_or_load(config, target.train)
        testset = TestSet(model, target.test, {**config.proposals, "max_boxes": budgets[-1]})
        box_rows = []
        for k in budgets:
            metrics, _ = testset.score(k)
            split = metrics["seconds_split"]
            box_rows.append(
                {
                    "k": k,
                    **metrics,
                    "proposal_s": split["proposals"],
                    "feature_s": split["features"],
                    "heads_s": split["heads_nms"],
                }
            )
            print(f"   k={k:5d}  VOC mAP@0.5 {metrics['mAP50']:.3f}  {metrics['seconds_per_image'] or 0:.2f} s/img")
        nms_rows = []
        for t in exp["nms_thresholds"]:
            metrics, _ = testset.score(exp.get("nms_boxes", config.proposals.get("max_boxes")), nms_threshold=t)
            nms_rows.append({"nms": t, **metrics})
            print(f"   NMS {t:.2f}  VOC mAP@0.5 {metrics['mAP50']:.3f}  COCO AP {metrics['coco_AP']:.3f}")
        rule_rows = []
        for name, keywords in RULES:
            metrics, _ = testset.score(exp.get("nms_boxes", config.proposals.get("max_boxes")), **keywords)
            rule_rows.append({"rule": name, **metrics})
            print(f"   {name[:40]:40s}  VOC mAP@0.5 {metrics['mAP50']:.3f}  COCO AP {metrics['coco_AP']:.3f}")
        report.lines += [
            f"## {target.name}",
            "",
            base_summary(target),
            f"Trained on {config.proposals.get('max_boxes')} boxes per image; NMS sweep at "
            f"{exp.get('nms_boxes', config.proposals.get('max_boxes'))} test boxes per image.",
            "",
            "Test boxes per image:",
            "",
            *table(box_rows, BOX_COLUMNS),
            "NMS threshold (IoU):",
            "",
            *table(nms_rows, NMS_COLUMNS),
            "Test rule (precision-recall curves end where the kept detections run out; recall and "
            "precision there are means over the classes):",
            "",
            *table(rule_rows, RULE_COLUMNS),
        ]
        report.results[target.name] = {
            "fit": fit,
            "config": to_dict(config),
            "budgets": {r["k"]: r for r in box_rows},
            "nms": {r["nms"]: r for r in nms_rows},
            "test_rules": {r["rule"]: r for r in rule_rows},
        }
        box_panels[target.name] = {
            "VOC mAP@0.5": ([r["boxes_per_image"] for r in box_rows], [r["mAP50"] for r in box_rows]),
            "COCO AP": ([r["boxes_per_image"] for r in box_rows], [r["coco_AP"] for r in box_rows]),
        }
        time_panels[target.name] = {
            "VOC mAP@0.5": ([r["seconds_per_image"] for r in box_rows], [r["mAP50"] for r in box_rows])
        }
        nms_panels[target.name] = {
            "VOC mAP@0.5": ([r["nms"] for r in nms_rows], [r["mAP50"] for r in nms_rows]),
            "COCO AP": ([r["nms"] for r in nms_rows], [r["coco_AP"] for r in nms_rows]),
        }
    line_plot(report.out / "boxes.png", box_panels, "test boxes per image", "AP (test)", logx=True)
    line_plot(report.out / "time.png", time_panels, "seconds per image", "VOC mAP@0.5 (test)")
    line_plot(report.out / "nms.png", nms_panels, "NMS IoU threshold", "AP (test)")
    report.lines += [
        "![AP against test boxes per image](boxes.png)",
        "",
        "![mAP against seconds per image](time.png)",
        "",
        "![AP against the NMS threshold](nms.png)",
        "",
        "s/img: proposals (the same for every k) + warp and CNN (the cached extraction's time scaled to k) + "
        "heads and NMS (measured). The box and NMS tables use the detector's test rule (R-CNN's, the default).",
        "",
    ]
    report.write()
