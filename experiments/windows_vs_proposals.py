"""Sliding windows vs Selective Search vs learned (RPN) proposals: the same detector trained on
each method's boxes and tested at equal budgets (the first k boxes of each image), with the boxes' recall beside mAP.

Config ``[experiment]``: ``methods`` (``[{name, method, ...}]``: a name and the settings of an
`rcnn.proposals.make_proposer` call; a learned proposer, ``method = "rpn"`` with
``train_config`` and ``fit_cache``, is the RPN of a Faster R-CNN fitted on the dataset's train
split, `harness.learned_proposals`), ``budgets`` (test boxes per image), ``train_boxes`` (boxes per
training image), ``overrides`` (merged into each dataset's base detector config).

    .venv/bin/python experiments/run.py windows-vs-proposals [--data PATH]
"""

from __future__ import annotations

from harness import (
    Report,
    TestSet,
    base_summary,
    detector_config,
    fit_or_load,
    learned_proposals,
    line_plot,
    table,
    targets,
)

from rcnn.config import load_toml, to_dict

COLUMNS = [
    ("method", "method"),
    ("k", "boxes/img (k)"),
    ("boxes_per_image", "mean boxes", 0),
    ("mAP50", "VOC mAP@0.5"),
    ("coco_AP", "COCO AP"),
    ("coco_AP50", "COCO AP50"),
    ("recall@0.5", "recall@0.5"),
    ("recall@0.7", "recall@0.7"),
    ("AR", "AR"),
    ("seconds_per_image", "s/img", 2),
    ("proposal_s", "proposals s/img"),
    ("feature_s", "CNN s/img"),
]


def run(args) -> None:
    exp = load_toml(args.config)["experiment"]
    budgets = sorted(int(k) for k in exp["budgets"])
    report = Report(args, exp["title"], exp.get("intro", ""))
    map_panels, recall_panels = {}, {}
    for target in targets(args):
        print(f"== {args.name} on {target.name}")
        report.lines += [f"## {target.name}", "", base_summary(target), ""]
        rows, results = [], {}
        map_panels[target.name], recall_panels[target.name] = {}, {}
        for m in exp["methods"]:
            params = {k: v for k, v in m.items() if k != "name"}
            if "train_config" in params:
                params = learned_proposals(params, target.name, target.train)
            config = detector_config(
                target.base,
                exp.get("overrides"),
                {"proposals": {**params, "max_boxes": int(exp["train_boxes"])}},
            )
            print(f"-- {m['name']}: train on {exp['train_boxes']} boxes per image")
            model, fit = fit_or_load(config, target.train)
            testset = TestSet(model, target.test, {**config.proposals, "max_boxes": budgets[-1]})
            results[m["name"]] = {"fit": fit, "config": to_dict(config), "budgets": {}}
            for k in budgets:
                metrics, _ = testset.score(k)
                print(f"   k={k:5d}  VOC mAP@0.5 {metrics['mAP50']:.3f}  recall@0.5 {metrics['recall@0.5']:.3f}")
                split = metrics["seconds_split"]
                rows.append(
                    {
                        "method": m["name"],
                        "k": k,
                        **metrics,
                        "proposal_s": split["proposals"],
                        "feature_s": split["features"],
                    }
                )
                results[m["name"]]["budgets"][k] = metrics
            mine = [r for r in rows if r["method"] == m["name"]]
            map_panels[target.name][m["name"]] = ([r["boxes_per_image"] for r in mine], [r["mAP50"] for r in mine])
            recall_panels[target.name][m["name"]] = (
                [r["boxes_per_image"] for r in mine],
                [r["recall@0.5"] for r in mine],
            )
        report.lines += table(rows, COLUMNS)
        report.results[target.name] = results
    line_plot(report.out / "map.png", map_panels, "proposals per image", "VOC mAP@0.5 (test)", logx=True)
    line_plot(report.out / "recall.png", recall_panels, "proposals per image", "recall at IoU 0.5", logx=True)
    report.lines += [
        "![mAP against boxes per image](map.png)",
        "",
        "![recall against boxes per image](recall.png)",
        "",
        "k: the first k boxes of each image (Selective Search's ranking, the RPN's objectness after its NMS; "
        "the windows' order thins the grid evenly), mean boxes: what images had (small images have fewer "
        "Selective Search boxes; the RPN's NMS leaves fewer than 2000). s/img: proposals (their time is the "
        "same for every k) + warp and CNN (the cached extraction's time scaled to k) + heads and NMS.",
        "",
    ]
    report.write()
