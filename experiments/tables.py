"""Every measured table of README.md and docs/ from the experiments' committed results.json files.

A table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; this script writes
TABLES[NAME](results) between them. ``--check`` writes nothing and exits 1 when a committed
table differs from what its results.json gives (tests/experiments/test_tables.py runs it).

    .venv/bin/python experiments/tables.py [--check]     # make tables
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
MARKER = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.DOTALL)
DETECTOR_NAMES = {"rcnn": "R-CNN", "fast_rcnn": "Fast R-CNN", "faster_rcnn": "Faster R-CNN", "localizer": "localiser"}


@cache
def results(name: str, file: str = "results.json") -> dict:
    """experiments/results/NAME/FILE, parsed (read once)."""
    return json.loads((RESULTS / name / file).read_text())


def datasets(data: dict) -> list[str]:
    """The dataset keys of a results.json (everything but its run metadata)."""
    return [k for k in data if k != "meta"]


def f3(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def markdown(header: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    """A Markdown table; columns from `right_from` on are right-aligned (numbers)."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def family_table(dataset: str) -> str:
    data = results("family")
    if dataset not in data:
        raise SystemExit(
            f"experiments/results/family/results.json: no dataset {dataset!r} (it has {', '.join(datasets(data))})"
        )
    rows = []
    for r in data[dataset]["rows"]:
        cpu = r["train_cpu_seconds"]
        train = f"{r['train_seconds']:.0f}" + (f" ({cpu:.0f})" if cpu is not None else "")
        test = (
            f"RPN inside: {r['network_seconds']:.3f}"
            if r["detector"] == "faster_rcnn"
            else f"{r['proposals_seconds']:.3f} + {r['network_seconds']:.3f}"
        )
        rows.append([r["arm"], f3(r["mAP50"]), f3(r["coco_AP"]), train, test])
    return markdown([dataset, "VOC mAP@0.5", "COCO AP", "train s (CPU s)", "test s/img: proposals + network"], rows)


def family_summary() -> str:
    """The README's table: each arm's accuracy on both datasets and its cards test time."""
    data = results("family")
    names = datasets(data)
    by_arm: dict[str, dict[str, dict]] = {}
    for name in names:
        for r in data[name]["rows"]:
            by_arm.setdefault(r["arm"], {})[name] = r
    header = ["detector (one MobileNetV2)"]
    for name in names:
        header += [f"{name} mAP@0.5", "COCO AP"]
    header.append("test s/img (" + names[-1] + ")")
    rows = []
    for arm, per in by_arm.items():
        row = [arm]
        for name in names:
            r = per.get(name)
            row += [f3(r["mAP50"]), f3(r["coco_AP"])] if r else ["", ""]
        last = per.get(names[-1])
        row.append(f"{last['total_seconds']:.3f}" if last else "")
        rows.append(row)
    return markdown(header, rows)


def generalization() -> str:
    data = results("generalization")
    names = datasets(data)
    kinds = list(dict.fromkeys(k for n in names for k in data[n] if not k.startswith("_")))
    header = ["data", *(DETECTOR_NAMES.get(k, k) + ": mAP@0.5 / COCO AP" for k in kinds)]
    rows = []
    for n in names:
        cells = [f"{f3(data[n][k]['mAP50'])} / {f3(data[n][k]['coco_AP'])}" if k in data[n] else "" for k in kinds]
        rows.append([f"{n} ({data[n].get('_size', '')})", *cells])
    return markdown(header, rows)


def by_dataset(data: dict, first: str, keys, columns: list[str], cells) -> str:
    """A table with a row per key of `keys` and, per dataset of `data`, `columns` (each
    headed ``"{dataset} {column}"`` for the first, as is for the rest): `cells(dataset, key)`
    gives a row's cells, None for blanks."""
    names = datasets(data)
    header = [first]
    for n in names:
        header += [f"{n} {columns[0]}", *columns[1:]]
    rows = []
    for key in keys(data[names[0]]):
        row = [key]
        for n in names:
            row += cells(n, key) or [""] * len(columns)
        rows.append(row)
    return markdown(header, rows)


def arms(name: str) -> str:
    """An arms experiment (experiments/run.py): one row per arm, mAP@0.5 and COCO AP per dataset."""
    data = results(name)

    def cells(n, arm):
        m = data[n].get(arm, {}).get("metrics")
        return [f3(m["mAP50"]), f3(m["coco_AP"])] if m else None

    return by_dataset(data, "arm", list, ["mAP@0.5", "COCO AP"], cells)


def augmentation() -> str:
    """One row per augmentation arm (experiments/configs/augmentation.toml, run by family.py):
    mAP@0.5, COCO AP and training seconds per dataset."""
    data = results("augmentation")

    def cells(n, arm):
        r = next((r for r in data[n]["rows"] if r["arm"] == arm), None)
        return [f3(r["mAP50"]), f3(r["coco_AP"]), f"{r['train_seconds']:.0f}"] if r else None

    def arms_of(entry):
        return [r["arm"] for r in entry["rows"]]

    return by_dataset(data, "arm", arms_of, ["mAP@0.5", "COCO AP", "train s"], cells)


def budget() -> str:
    data = results("budget")

    def cells(n, k):
        b = data[n]["budgets"].get(k)
        return [f3(b["mAP50"]), f"{b['boxes_per_image']:.0f}", f"{b['seconds_per_image']:.2f}"] if b else None

    return by_dataset(data, "k", lambda d: d["budgets"], ["mAP@0.5", "boxes/img", "s/img"], cells)


def budget_nms() -> str:
    data = results("budget")

    def cells(n, t):
        return [f3(data[n]["nms"][t]["mAP50"]) if t in data[n]["nms"] else ""]

    return by_dataset(data, "NMS IoU", lambda d: d["nms"], ["mAP@0.5"], cells)


def budget_test_rule() -> str:
    data = results("budget")

    def cells(n, rule):
        r = data[n]["test_rules"][rule]
        return [f3(r["mAP50"]), f3(r["coco_AP"]), f3(r["pr_end_recall"])]

    return by_dataset(data, "test rule", lambda d: d["test_rules"], ["mAP@0.5", "COCO AP", "PR ends at recall"], cells)


def windows_vs_proposals() -> str:
    data = results("windows-vs-proposals")
    names = datasets(data)
    header = ["k"]
    for n in names:
        header += [f"{n}: {method}" for method in data[n]]
    ks = list(next(iter(data[names[0]].values()))["budgets"])
    rows = []
    for k in ks:
        row = [k]
        for n in names:
            for method in data[n].values():
                b = method["budgets"].get(k)
                row.append(f3(b["mAP50"]) if b else "")
        rows.append(row)
    return markdown(header, rows)


def learned_windows() -> str:
    """windows-vs-proposals' last section from the family's rows (experiments/windows_vs_proposals.py
    `learned_section`, its heading left to the page)."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from windows_vs_proposals import learned_section

    lines = learned_section(results("family"), "experiments/results/family/results.json")
    return "\n".join(lines[2:]).strip() + "\n"


def proposals() -> str:
    """AR, recall@0.7 and boxes per image at each method's largest k."""
    data = results("proposals")
    labels = {m: spec["label"] for m, spec in data["config"]["methods"].items()}
    sets = list(data["results"])
    header = ["method"]
    for s in sets:
        header += [f"{s} AR", "recall@0.7", "boxes/img", "s/img"]
    rows = []
    for method, label in labels.items():
        row = [label]
        for s in sets:
            r = data["results"][s].get(method)
            if r is None:
                row += ["", "", "", ""]
                continue
            last = r["overall"][-1]
            row += [
                f3(last["ar"]),
                f3(last["recall@0.7"]),
                f"{last['boxes_per_image']:.0f}",
                f"{r['seconds_per_image']:.3f}",
            ]
        rows.append(row)
    return markdown(header, rows)


def proposals_bench() -> str:
    """`make bench-proposals`: our default Selective Search against OpenCV's stock fast mode."""
    data = results("proposals", "bench.json")
    rows = [
        [name, f3(c["ar"]), f"{c['boxes_per_image']:.0f}", f"{c['s_per_image']:.2f}", f"{c['speed_vs_stock']:.1f}x"]
        for name, c in data["candidates"].items()
    ]
    return markdown(["Selective Search setting", "AR", "boxes/img", "s/img", "speed vs stock"], rows)


def localization() -> str:
    data = results("localization")
    rows = [
        [
            p["preset"],
            f3(p["class_accuracy"]),
            f3(p["mean_iou"]),
            f3(p["iou50"]),
            f3(p["presence_accuracy"]) or "-",
            f3(p["mAP50"]),
        ]
        for p in data["presets"]
    ]
    return markdown(["preset", "class acc", "mean IoU", "IoU >= 0.5", "presence acc", "VOC mAP@0.5"], rows)


def localization_versus() -> str:
    rows = [
        [v["detector"], f3(v["mAP50"]), f"{v['found_per_image']:.2f}", f"{v['objects_per_image']:.2f}"]
        for v in results("localization")["versus"]
    ]
    return markdown(["on `multi`", "VOC mAP@0.5", "objects found per image", "objects per image"], rows)


def localization_lambda() -> str:
    rows = [
        [f"{v['box_weight']:g}", f3(v["mean_iou"]), f3(v["mAP50"])] for v in results("localization")["lambda_sweep"]
    ]
    return markdown(["box weight lambda (`backgrounds`)", "mean IoU", "VOC mAP@0.5"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "family": family_summary,
    "family-cards": lambda: family_table("cards"),
    "family-synthetic": lambda: family_table("synthetic"),
    "generalization": generalization,
    "ablations": lambda: arms("ablations"),
    "svm-training": lambda: arms("svm-training"),
    "warp": lambda: arms("warp"),
    "budget": budget,
    "augmentation": augmentation,
    "budget-nms": budget_nms,
    "budget-test-rule": budget_test_rule,
    "windows-vs-proposals": windows_vs_proposals,
    "learned-windows": learned_windows,
    "proposals": proposals,
    "proposals-bench": proposals_bench,
    "localization": localization,
    "localization-versus": localization_versus,
    "localization-lambda": localization_lambda,
}


def render(text: str, where: str = "") -> str:
    """`text` with every marked table written from its results.json."""

    def fill(m: re.Match) -> str:
        if m.group(2) not in TABLES:
            raise SystemExit(f"{where}: <!-- table: {m.group(2)} -->: no such table (known: {', '.join(TABLES)})")
        return f"{m.group(1)}{TABLES[m.group(2)]()}\n{m.group(4)}"

    return MARKER.sub(fill, text)


def documents() -> list[Path]:
    """The files whose tables are generated: README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a table is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text()
        new = render(text, str(path.relative_to(ROOT)))
        if new != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("tables out of date with results.json (run `make tables`): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale else "every table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
