"""Proposal quality experiment: sliding windows vs Selective Search (ours and OpenCV's stock)
vs a Region Proposal Network (a Faster R-CNN's, trained on each dataset's train split).

Runs every [methods.*] of the config over the synthetic test split (generated when missing)
and, when present, cards/test; writes report.md, recall.png and results.json to the output
folder. Proposals are cached (cache/proposals), so a re-run only redoes what changed.

    .venv/bin/python experiments/proposals.py [--config experiments/configs/proposals.toml]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import joblib
import numpy as np

from rcnn.cache import write_text
from rcnn.config import load_toml
from rcnn.datasets import load_dataset
from rcnn.evaluation.recall import proposal_recall
from rcnn.proposals import ProposalStore, make_proposer
from rcnn.reports.report import save_figure

ROOT = Path(__file__).resolve().parent.parent


def datasets(cfg: dict, data: str | None = None) -> dict:
    """``{name: (train, test)}``: the synthetic splits (made unless already there) and cards
    if present, or instead of cards the splits of `data` (see `harness.splits`). The test
    split is measured; the train split trains the learned proposers (``method = "rpn"``)."""
    from harness import splits

    from rcnn.datasets.synthetic import make_synthetic

    synth = ROOT / cfg["synth"]
    make_synthetic(synth, cfg["synth_images"], cfg["synth_seed"])  # reuses the folder when it holds this set
    out = {"synthetic": (load_dataset(synth, split="train"), load_dataset(synth, split=cfg["split"]))}
    cards = (ROOT / cfg["cards"]).resolve()
    if data:
        out[Path(data).resolve().name] = splits(Path(data).resolve())
    elif cards.is_dir():
        out["cards"] = (load_dataset(cards.parent / "train"), load_dataset(cards))
    else:
        print(f"{cards} not found: cards left out")
    return out


def run_method(name: str, params: dict, dataset, run: dict) -> dict:
    params = dict(params)
    label = params.pop("label", name)
    max_images = params.pop("max_images", None)
    if max_images:
        dataset = dataset.subset([s.id for s in dataset.samples[:max_images]])
    store = ProposalStore(ROOT / run["cache"], make_proposer(**params))
    stats = store.compute(dataset, workers=run["workers"] or None)
    report = proposal_recall(dataset, store.load, run["ks"], {s.id: store.seconds(s) for s in dataset})
    report.update(name=name, label=label, params=store.proposer.params(), compute=stats)
    o = {r["k"]: r for r in report["overall"]}[max(run["ks"])]
    print(
        f"  {label:32s} AR {o['ar']:.3f}  R@0.7 {o['recall@0.7']:.3f}  MABO {o['mabo']:.3f}"
        f"  {o['boxes_per_image']:6.0f} boxes  {report['seconds_per_image']:.3f} s/img"
    )
    return report


def markdown(results: dict, meta: dict, config_text: str) -> str:
    lines = ["# Region proposals: sliding windows vs Selective Search vs a Region Proposal Network", ""]
    lines += [
        "Recall of ground-truth boxes by the top k proposals of each image: recall at IoU 0.5 and 0.7,",
        "AR = average recall over IoU 0.5 to 1 (Hosang et al.), MABO = mean over classes of the",
        "average best overlap (Uijlings et al.). s/img: seconds per image in one worker process",
        "(one OpenCV thread). Difficult objects left out. Sliding windows: one even grid of 2000",
        "windows whose first k are an even thinning (equal budgets). OpenCV stock fast:",
        "`switchToSelectiveSearchFast()` on the full-size image, every box, OpenCV's ranking (seeded).",
        "RPN: the Region Proposal Network of a Faster R-CNN trained on the dataset's train split",
        "(`experiments/configs/faster_demo.toml`, `faster_cards.toml`), its boxes after its NMS ranked",
        "by objectness (`rcnn propose --method rpn --model MODEL`); the NMS arms replace the model's",
        "NMS IoU 0.7 (`--nms 0.9`; `--nms 1.0` suppresses nothing: the best boxes by objectness).",
        "The machine is shared with other jobs, so s/img moves with their load (each method's",
        "images ran at different times); `make bench-proposals` times methods in one run.",
        "",
    ]
    for ds_name, reports in results.items():
        first = next(iter(reports.values()))
        lines += [f"## {ds_name} ({first['images']} images, {first['objects']} objects)", ""]
        lines += [
            "| method | k | recall@0.5 | recall@0.7 | AR | MABO | boxes/img | s/img |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in reports.values():
            note = f" (first {r['images']} images)" if r["images"] != first["images"] else ""
            for row in r["overall"]:
                lines.append(
                    f"| {r['label']}{note} | {row['k']} | {row['recall@0.5']:.3f} | {row['recall@0.7']:.3f} | {row['ar']:.3f}"
                    f" | {row['mabo']:.3f} | {row['boxes_per_image']:.0f} | {r['seconds_per_image']:.3f} |"
                )
        lines.append("")
    lines += ["![recall and AR against the number of boxes](recall.png)", ""]
    lines += ["## Run", ""] + [f"- {k}: {v}" for k, v in meta.items()] + [""]
    lines += ["## Config", "", "```toml", config_text.strip(), "```", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("recall@0.5", "recall @ IoU 0.5"), ("recall@0.7", "recall @ IoU 0.7"), ("ar", "average recall (0.5:1)")]
    fig, axes = plt.subplots(len(results), 3, figsize=(14, 4 * len(results)), squeeze=False)
    for row, (ds_name, reports) in zip(axes, results.items()):
        for ax, (key, title) in zip(row, metrics):
            for r in reports.values():
                rows = [x for x in r["overall"] if x["boxes_per_image"] > 0]
                ax.plot([x["boxes_per_image"] for x in rows], [x[key] for x in rows], marker="o", label=r["label"])
            ax.set_xscale("log")
            ax.set_ylim(0, 1)
            ax.set_xlabel("proposals per image")
            ax.set_title(f"{ds_name}: {title}")
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "experiments/configs/proposals.toml"))
    parser.add_argument(
        "--data", help="a dataset to use instead of cards: a folder with train/ and test/, or a VOC root"
    )
    args = parser.parse_args(argv)
    start = time.time()
    cfg = load_toml(args.config)
    run = cfg["run"]
    out = ROOT / run["out"]
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    from harness import learned_proposals

    for name, (train, dataset) in datasets(cfg["data"], args.data).items():
        ds_name = f"{name}/test"
        print(f"{ds_name}: {len(dataset)} images")
        methods = {
            m: learned_proposals(p, name, train) if "train_config" in p else p for m, p in cfg["methods"].items()
        }
        results[ds_name] = {m: run_method(m, p, dataset, run) for m, p in methods.items()}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    meta = {
        "git commit": commit or "unknown",
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "run time": f"{time.time() - start:.0f} s (cached proposals are not recomputed)",
        "machine": f"{platform.machine()}, {joblib.cpu_count()} cores, shared with other jobs",
        "versions": f"python {platform.python_version()}, opencv {cv2.__version__}, numpy {np.__version__}, joblib {joblib.__version__}",
        "command": "make experiment-proposals",
    }
    plot(results, out / "recall.png")
    write_text(out / "results.json", json.dumps({"meta": meta, "config": cfg, "results": results}, indent=1) + "\n")
    write_text(out / "report.md", markdown(results, meta, Path(args.config).read_text()))
    print(f"wrote {out}/report.md, recall.png, results.json ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
