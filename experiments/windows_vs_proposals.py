"""Sliding windows vs Selective Search vs learned (RPN) proposals: the same detector trained on
each method's boxes and tested at equal budgets (the first k boxes of each image), with the boxes' recall beside mAP.

Config ``[experiment]``: ``methods`` (``[{name, method, ...}]``: a name and the settings of an
`rcnn.proposals.make_proposer` call; a learned proposer, ``method = "rpn"`` with
``train_config`` and ``fit_cache``, is the RPN of a Faster R-CNN fitted on the dataset's train
split, `harness.learned_proposals`), ``budgets`` (test boxes per image), ``train_boxes`` (boxes per
training image), ``overrides`` (merged into each dataset's base detector config),
``family_results`` (the family experiment's results.json, for the last section).

The last section, "Learned windows against learned proposals" (`learned_section`), trains
nothing: it reads the family experiment's rows of Faster R-CNN and the dense detectors (YOLO,
SSD, CenterNet), each trained there with its defaults (20 epochs), and sets their boxes
scored per image, accuracy and seconds side by side, so the question above (hand-made
windows against proposals, Hosang et al.) has its present-day form: learned windows against
learned proposals.

    .venv/bin/python experiments/run.py windows-vs-proposals [--data PATH]
"""

from __future__ import annotations

import json
from pathlib import Path

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

FAMILY_RESULTS = "experiments/results/family/results.json"
PROPOSALS = "faster_rcnn"  # learned proposals
WINDOWS = ("yolo", "ssd", "centernet")  # learned windows: every position of a map scores boxes
HOSANG = (32.7, 54.6)  # R-CNN mAP on VOC 2007 at 1000 boxes: sliding windows, Selective Search (Hosang et al.)
LEVEL = 0.01  # mAP within this of each other: level
ARMS = {"faster_rcnn": "Faster R-CNN", "yolo": "YOLO", "ssd": "SSD", "centernet": "CenterNet"}  # family.toml's

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
    source = exp.get("family_results", FAMILY_RESULTS)
    report.lines += learned_section(load_family(source), source)
    report.write()


def load_family(path: str | Path) -> dict | None:
    """The family experiment's results (its results.json), or None when there is none."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def _boxes(row: dict) -> str:
    """A row's boxes scored per image, step by step ("4800 anchors + 300 proposals"); "-"
    for a row measured before the count was kept."""
    steps = row.get("boxes_scored_steps")
    if not steps:
        return "-"
    return " + ".join(f"{n:,.0f} {what}" for what, n in steps.items())


def _length(row: dict, family: dict) -> tuple[int | None, float | None]:
    """``(iterations, epochs)`` a row's arm trained for (its config's ``train`` table and
    the number of training images of its fit); None where results.json does not say."""
    train = (family.get("configs", {}).get(row["arm"]) or {}).get("train") or {}
    images = (family.get("fits", {}).get(row["arm"]) or {}).get("images")
    iterations = train.get("iterations")
    if not iterations or not images:
        return iterations, None
    return iterations, iterations * train.get("images_per_batch", 1) / images


def _times(x: float) -> str:
    """A ratio as "4", "2.5" or "102"."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def _points(diff: float) -> str:
    if abs(diff) < LEVEL:
        return "level with"
    return f"{abs(diff) * 100:.1f} points {'above' if diff > 0 else 'below'}"


def conclusion(name: str, rows: dict[str, dict]) -> str:
    """The paragraph under a dataset's table, from its numbers: the best learned-window
    detector against Faster R-CNN (accuracy, boxes scored, seconds), and the gap against the
    2014 one between hand-made windows and proposals."""
    faster = rows[PROPOSALS]
    dense = [rows[k] for k in WINDOWS if k in rows]
    best = max(dense, key=lambda r: r["mAP50"])
    diff = best["mAP50"] - faster["mAP50"]
    text = (
        f"On {name} the best learned-window detector, {best['arm']}, is {_points(diff)} Faster R-CNN's learned "
        f"proposals in VOC mAP@0.5 ({best['mAP50']:.3f} against {faster['mAP50']:.3f}; COCO AP "
        f"{best['coco_AP']:.3f} against {faster['coco_AP']:.3f})"
    )
    if best.get("boxes_scored") and faster.get("boxes_scored"):
        a, b = best["boxes_scored"], faster["boxes_scored"]
        text += (
            f", scoring {_boxes(best)} per image where Faster R-CNN scores {_boxes(faster)} ({b:,.0f} in all; "
            + (f"{_times(a / b)} times as many" if a >= b else f"{_times(b / a)} times as many for Faster R-CNN")
            + ")"
        )
    t, u = best.get("total_seconds"), faster.get("total_seconds")
    if t and u:
        text += f", in {t:.3f} s per image against {u:.3f} (" + (
            f"{_times(u / t)} times as fast)" if t <= u else f"{_times(t / u)} times as slow)"
        )
    below = [r["arm"] for r in dense if r["mAP50"] < faster["mAP50"] - LEVEL]
    above = [r["arm"] for r in dense if r["mAP50"] > faster["mAP50"] + LEVEL]
    text += (
        f". Of the {len(dense)} dense detectors, {len(above)} beat Faster R-CNN by more than a point, "
        f"{len(below)} trail it by more ({', '.join(below) or 'none'}). "
    )
    gap = (faster["mAP50"] - best["mAP50"]) * 100
    text += (
        f"In 2014 hand-made sliding windows trailed Selective Search by {HOSANG[1] - HOSANG[0]:.1f} points (R-CNN at "
        f"1000 boxes, {HOSANG[0]} against {HOSANG[1]} mAP on VOC 2007, Hosang et al.); learned, the windows "
        + ("are level with the proposals or ahead of them" if gap < LEVEL * 100 else f"trail by {gap:.1f} points")
        + " here (points on this data, not on VOC 2007: only the gap's direction compares)."
    )
    return text


def learned_section(family: dict | None, source: str = FAMILY_RESULTS) -> list[str]:
    """The report's section "Learned windows against learned proposals" (markdown lines)
    from the family experiment's `family` results (its results.json, read from `source`):
    per dataset, Faster R-CNN and the dense detectors with the boxes each scores per image,
    VOC mAP@0.5, COCO AP, train seconds, test seconds per image and how long each trained,
    and the paragraph `conclusion` draws from them; one line where the rows are not there."""
    lines = [
        "## Learned windows against learned proposals",
        "",
        "No training here: the rows of the family experiment (`make experiment-family`), where Faster R-CNN "
        "(learned proposals: an RPN's anchors, then its proposals) and the dense detectors (learned windows: "
        "every position of a map scores its boxes) train on the same data, each with its base config. Boxes "
        "scored per image: what each step of the detector scores, counted by its trace over the timed test "
        "images.",
        "",
    ]
    if family is None:
        return lines + [f"No family results at `{source}` yet: run `make experiment-family` first.", ""]
    lacking = {}
    for name in (k for k in family if k != "meta"):
        rows = {}
        for r in family[name].get("rows", []):
            rows.setdefault(r["detector"], r)
        missing = [ARMS[k] for k in (PROPOSALS, *WINDOWS) if k not in rows]
        if PROPOSALS not in rows or not any(k in rows for k in WINDOWS):
            lacking[name] = missing
            continue
        shown = [rows[k] for k in (PROPOSALS, *WINDOWS) if k in rows]
        lengths = [_length(r, family[name]) for r in shown]
        table_rows = []
        for r, (iterations, epochs) in zip(shown, lengths):
            trained = (
                "-" if iterations is None else f"{iterations} it." + ("" if epochs is None else f", {epochs:.1f} ep.")
            )
            table_rows.append({**r, "boxes": _boxes(r), "trained": trained})
        columns = [
            ("arm", "detector"),
            ("boxes", "boxes scored/img"),
            ("mAP50", "VOC mAP@0.5"),
            ("coco_AP", "COCO AP"),
            ("train_seconds", "train s", 0),
            ("total_seconds", "test s/img", 3),
            ("trained", "trained"),
        ]
        epochs = [e for _, e in lengths if e is not None]
        if len(epochs) == len(shown) and max(epochs) - min(epochs) < 0.5:
            budget = f"Every arm trained for {epochs[0]:.1f} epochs (iterations x images per batch / training images)."
        elif epochs:
            budget = "The training lengths differ (the last column): these are not equal budgets."
        else:
            budget = "results.json does not say how long the arms trained."
        lines += [f"**{name}**", "", *table(table_rows, columns), budget]
        if missing:
            lines.append(f"No rows yet for {', '.join(missing)}.")
        lines += ["", conclusion(name, rows), ""]
    for missing in dict.fromkeys(tuple(m) for m in lacking.values()):
        names = [n for n, m in lacking.items() if tuple(m) == missing]
        lines += [
            f"Not yet on {', '.join(names)}: `{source}` has no rows there for {', '.join(missing)} (their arms "
            f"have not been run: `experiments/family.py {' '.join(f'--arm {a!r}' for a in missing)}` runs them "
            "and keeps the other rows).",
            "",
        ]
    return lines
