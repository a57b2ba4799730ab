"""Benchmark: our default Selective Search over cards/test against OpenCV's stock fast mode.

Reference, as a naive user runs it: one process, one image at a time, `cv2.imread`, then
`switchToSelectiveSearchFast()` on the full-size image (OpenCV's default threads), every box.
Ours: `ProposalStore(tmp, SelectiveSearch()).compute(dataset)` with the default config, a cold
cache and all cores. Both are timed in this same run (the machine is shared: the ratio is what
matters) and scored by AR (IoU 0.5:1) of their top 2000 boxes. `--candidates` also measures
single-process AR and seconds per image of the configurations the default was chosen from,
each image run through every candidate in turn so that load changes hit them alike.

    .venv/bin/python experiments/bench_proposals.py [--candidates] [--images N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import joblib

from rcnn.cache import write_text
from rcnn.datasets import load_dataset, read_image
from rcnn.evaluation.recall import proposal_recall
from rcnn.proposals import ProposalStore, SelectiveSearch, make_proposer
from rcnn.proposals.selective_search import opencv_stock_fast

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "../shared/data/cards/test"
OUT = ROOT / "experiments/results/proposals/bench.json"

ALL, FTS = ["color", "fill", "texture", "size"], ["fill", "texture", "size"]
CFTS_F_S = [ALL, ["fill"], ["size"]]
CANDIDATES = {  # name -> make_proposer parameters (selective search); the last is our default
    "fast preset, 500 px": {"mode": "fast", "longest_side": 500},
    "fast preset, 300 px": {"mode": "fast"},
    "quality preset, 200 px": {"mode": "quality", "longest_side": 200},
    "HSV+Lab k150,300,450 {CFTS,F,S}": {"color_spaces": ["hsv", "lab"], "ks": [150, 300, 450], "strategies": CFTS_F_S},
    "HSV+Lab+rgI k150,300,450 {CFTS,FTS,F,S}": {"ks": [150, 300, 450], "strategies": [ALL, FTS, ["fill"], ["size"]]},
    "HSV+Lab+rgI k150,300,450 {CFTS,F,S}": {"ks": [150, 300, 450], "strategies": CFTS_F_S},
    "same, 250 px": {"ks": [150, 300, 450], "strategies": CFTS_F_S, "longest_side": 250},
    "HSV+Lab+rgI k100,300 {CFS,F,S}": {"ks": [100, 300]},
    "HSV+Lab+rgI k100,200,400 {CFTS,F,S}": {"strategies": CFTS_F_S},
    "default: HSV+Lab+rgI k100,200,400 {CFS,F,S}": {},
}


def ar_of(dataset, proposals) -> float:
    return proposal_recall(dataset, proposals, ks=[2000])["overall"][0]["ar"]


def naive_stock(dataset) -> tuple[dict, float]:
    cv2.setNumThreads(-1)  # OpenCV's default, as a naive user has it (the rcnn command sets 1)
    boxes = {}
    start = time.perf_counter()
    for s in dataset:
        bgr = cv2.imread(str(s.image_path))
        boxes[s.id] = opencv_stock_fast(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    seconds = time.perf_counter() - start
    cv2.setNumThreads(1)
    return boxes, seconds


def candidates(dataset) -> dict:
    proposers = {"OpenCV stock fast, full size": opencv_stock_fast}
    proposers.update({name: make_proposer("selective_search", **p) for name, p in CANDIDATES.items()})
    boxes = {name: {} for name in proposers}
    seconds = {name: 0.0 for name in proposers}
    for s in dataset:
        image = read_image(s.image_path)
        for name, proposer in proposers.items():
            start = time.perf_counter()
            boxes[name][s.id] = proposer(image)
            seconds[name] += time.perf_counter() - start
    ref = seconds["OpenCV stock fast, full size"]
    print(f"\ncandidates, one process, {len(dataset)} images (speed relative to stock fast):")
    rows = {}
    for name in proposers:
        report = proposal_recall(dataset, boxes[name], ks=[100, 500, 2000])
        ar = {r["k"]: r["ar"] for r in report["overall"]}
        n = report["overall"][-1]["boxes_per_image"]
        rows[name] = {"ar@100": ar[100], "ar@500": ar[500], "ar": ar[2000], "boxes_per_image": n,
                      "s_per_image": seconds[name] / len(dataset), "speed_vs_stock": ref / seconds[name]}  # fmt: skip
        print(f"  {name:32s} AR {ar[2000]:.3f} (AR@100 {ar[100]:.3f}, AR@500 {ar[500]:.3f})  {n:5.0f} boxes"
              f"  {seconds[name] / len(dataset):.3f} s/img  x{ref / seconds[name]:.2f}")  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", action="store_true", help="also measure the candidate configurations")
    parser.add_argument("--images", type=int, help="only the first N images")
    args = parser.parse_args(argv)
    if not CARDS.is_dir():
        print(f"{CARDS} not found: this benchmark needs the shared cards data", file=sys.stderr)
        return 1
    dataset = load_dataset(CARDS)
    if args.images:
        dataset = dataset.subset([s.id for s in dataset.samples[: args.images]])
    n = len(dataset)
    print(f"cards/test: {n} images, {joblib.cpu_count()} cores (shared machine: timings are noisy)")

    stock_boxes, stock_s = naive_stock(dataset)
    stock_ar = ar_of(dataset, stock_boxes)
    print(f"OpenCV stock fast, naive loop : AR {stock_ar:.3f}  {n / stock_s:6.2f} img/s  ({stock_s:.1f} s)")

    proposer = SelectiveSearch()
    with tempfile.TemporaryDirectory() as tmp:
        store = ProposalStore(tmp, proposer)
        start = time.perf_counter()
        store.compute(dataset)
        ours_s = time.perf_counter() - start
        ours_ar = ar_of(dataset, store.load)
    print(f"ours (default, all cores)     : AR {ours_ar:.3f}  {n / ours_s:6.2f} img/s  ({ours_s:.1f} s)")
    ratio = stock_s / ours_s
    print(
        f"speed ratio ours/stock: {ratio:.2f}x (target >= 3);  AR ours - stock: {ours_ar - stock_ar:+.3f} (target >= 0)"
    )
    result = {
        "images": n,
        "cores": joblib.cpu_count(),
        "default": proposer.params(),
        "stock": {"ar": stock_ar, "images_per_second": n / stock_s},
        "ours": {"ar": ours_ar, "images_per_second": n / ours_s},
        "speed_ratio": ratio,
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    if args.candidates:
        result["candidates"] = candidates(dataset)
    write_text(OUT, json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
