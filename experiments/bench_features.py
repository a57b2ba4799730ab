"""Benchmark the feature stage on real cards crops: warp (cv2 vs roi_align) and CNN inference
(eager vs TorchScript-frozen, contiguous vs channels_last, batch sizes) at 224 and 128 px.

All variants run interleaved in the same rounds (the machine is shared, so absolute figures
drift); the table gives the median crops/s over rounds and the median per-round ratio to the
reference in crops/s (cv2 warp; eager PyTorch at batch 32).

    .venv/bin/python experiments/bench_features.py [--rounds 5] [--backbone mobilenet_v2] [--omp]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from rcnn.datasets import read_image
from rcnn.features import FeatureExtractor, set_threads, warp_normalized
from rcnn.features.extractor import freeze_for_inference

CARDS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cards" / "test"


def random_boxes(rng, w, h, n):
    xy = rng.uniform([0, 0], [w - 20, h - 20], (n, 2))
    wh = rng.uniform(20, [w, h], (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1).astype(np.float32)


def rounds_table(title, variants, reference, rounds):
    """Run each ``name -> fn() -> items`` once per round, interleaved; print medians and ratios."""
    times = {k: [] for k in variants}
    items = {}
    for _ in range(rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            items[name] = fn()
            times[name].append(time.perf_counter() - t)
    print(f"\n{title}\n{'variant':<28}{'items/s':>10}{'x ref':>8}")
    for name in variants:
        rate = statistics.median(items[name] / t for t in times[name])
        ratio = statistics.median(items[name] / t * r / items[reference] for r, t in zip(times[reference], times[name]))
        print(f"{name:<28}{rate:>10.1f}{ratio:>8.2f}")
    sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    ap.add_argument("--omp", action="store_true", help="also compare OpenMP wait policies (subprocesses)")
    args = ap.parse_args(argv)
    threads = set_threads(0)
    images = sorted(CARDS.glob("*.jpg"))[:4]
    if not images:
        sys.exit(f"{CARDS}: cards data not found")
    rng = np.random.default_rng(0)
    image = read_image(images[0])
    h, w = image.shape[:2]
    print(f"torch {torch.__version__}, {threads} threads, image {images[0].name} {w}x{h}")

    boxes = random_boxes(rng, w, h, 256)
    for s in args.sizes:
        rounds_table(
            f"warp 256 crops to {s} px (normalised float tensor out)",
            {
                "cv2.warpAffine": lambda s=s: len(warp_normalized(image, boxes, s, 16, "cv2")),
                "roi_align": lambda s=s: len(warp_normalized(image, boxes, s, 16, "roi_align")),
            },
            "cv2.warpAffine",
            args.rounds,
        )

    extractor = FeatureExtractor(backbone=args.backbone, frozen=False)
    eager = extractor.module
    print(f"\n{args.backbone}, weights {extractor.weights_source}")
    for s in args.sizes:
        batch = {bs: warp_normalized(image, random_boxes(rng, w, h, bs), s, 16) for bs in (8, 16, 32, 64)}
        cl = {bs: x.contiguous(memory_format=torch.channels_last) for bs, x in batch.items()}
        nchw = {bs: x.contiguous() for bs, x in batch.items()}
        t = time.perf_counter()
        frozen = freeze_for_inference(eager, nchw[32], torch.contiguous_format)
        prep = time.perf_counter() - t
        frozen_cl = freeze_for_inference(eager, cl[32], torch.channels_last)
        eager_cl = copy.deepcopy(eager).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            diff = max(float((frozen(nchw[bs]) - eager(nchw[bs])).abs().max()) for bs in (16, 32))
            diff_cl = float((frozen_cl(cl[32]) - eager(nchw[32])).abs().max())

        def run(model, xs, bs):
            with torch.inference_mode():
                model(xs[bs])
            return bs

        variants = {
            "eager b32": partial(run, eager, nchw, 32),
            "eager channels_last b32": partial(run, eager_cl, cl, 32),
        }
        for bs in (8, 16, 32, 64):
            variants[f"frozen b{bs}"] = partial(run, frozen, nchw, bs)
        variants["frozen channels_last b32"] = partial(run, frozen_cl, cl, 32)
        for fn in variants.values():
            fn()  # warm up (MKLDNN weight packing, allocator)
        print(f"\n{s} px: freezing took {prep:.1f} s; max |frozen - eager| {diff:.2e} (channels_last {diff_cl:.2e})")
        rounds_table(f"CNN on {s} px crops (crops/s)", variants, "eager b32", args.rounds)

    # end to end: extract() on 128 crops of one image, frozen vs eager, same run
    for s in args.sizes:
        ex = {
            "eager": FeatureExtractor(backbone=args.backbone, crop_size=s, frozen=False),
            "frozen": FeatureExtractor(backbone=args.backbone, crop_size=s, frozen=True),
        }
        b = random_boxes(rng, w, h, 128)
        for e in ex.values():
            e.extract(image, b[:32])
        variants = {k: partial(lambda e, boxes: len(e.extract(image, boxes)), e, b) for k, e in ex.items()}
        rounds_table(f"extract() end to end, {s} px, 128 boxes (crops/s)", variants, "eager", max(2, args.rounds // 2))
    if args.omp:
        omp_policy(args.rounds)


CHILD = """
import os, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from rcnn.features.backbones import build_backbone
m = build_backbone("mobilenet_v2", "random")[0]
x = torch.randn(32, 3, 128, 128)
with torch.inference_mode():
    m(x)
    t = time.perf_counter()
    for _ in range(3):
        m(x)
print(96 / (time.perf_counter() - t))
"""


def omp_policy(rounds):
    """Eager MobileNetV2 at 128 px in fresh processes: OpenMP threads busy-waiting or sleeping."""
    import os
    import subprocess

    def child(policy, threads):
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        out = subprocess.run([sys.executable, "-c", CHILD, str(threads)], env=env, capture_output=True, text=True)
        return float(out.stdout.split()[-1])

    rates = {k: [] for k in ("PASSIVE 2 threads", "ACTIVE 2 threads", "PASSIVE 1 thread")}
    for _ in range(rounds):
        rates["PASSIVE 2 threads"].append(child("PASSIVE", 2))
        rates["ACTIVE 2 threads"].append(child("ACTIVE", 2))
        rates["PASSIVE 1 thread"].append(child("PASSIVE", 1))
    print("\nOpenMP wait policy, eager mobilenet_v2 128 px b32 (crops/s, median; per-round values)")
    for k, v in rates.items():
        print(f"{k:<28}{statistics.median(v):>10.1f}   {[round(r, 1) for r in v]}")


if __name__ == "__main__":
    main()
