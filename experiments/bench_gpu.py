"""Every detector on the GPU against the CPU: training iterations per second and detection
images per second, each detector with its defaults but a fixed, short training (`--iterations`
optimiser steps; the localiser `--epochs`) on a generated synthetic set, the same run on each
device, and the GPU's speed-up. Without CUDA it measures the CPU alone and says so.

    .venv/bin/python experiments/bench_gpu.py [--iterations 40] [--images 40] [--out DIR]

(`make bench-gpu`; writes DIR/results.json, default experiments/results/bench-gpu/.) Every
kind in `rcnn.detectors.DETECTORS` is measured, so a new detector is timed without an edit
here as long as its config has ``train.iterations``, ``finetune.iterations`` or ``epochs``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch

from rcnn.datasets import load_dataset
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import DETECTORS, build_detector, load_config
from rcnn.progress import log_to_stderr
from rcnn.reports.report import run_record

ROOT = Path(__file__).resolve().parents[1]


def _has(config, name: str) -> bool:
    return is_dataclass(config) and name in {f.name for f in fields(config)}


def short(kind: str, iterations: int, epochs: int) -> dict:
    """Overrides that make `kind`'s training a fixed number of steps (checkpoints off; R-CNN
    also 300 proposals per image instead of 2000, which keeps its CPU side to minutes)."""
    config = load_config(None, {"detector": kind})
    if _has(config, "train") and _has(config.train, "iterations"):
        return {"train": {"iterations": iterations, "checkpoint_every": 10**6}}
    if _has(config, "finetune") and _has(config.finetune, "iterations"):  # R-CNN: a crop per box, so fewer boxes
        return {"finetune": {"iterations": iterations}, "proposals": {"max_boxes": 300}}
    if _has(config, "epochs"):
        return {"epochs": epochs}
    raise SystemExit(
        f"bench_gpu: no way to shorten {kind!r}'s training (no train.iterations, finetune.iterations or epochs)"
    )


def measure(kind: str, device: str, train, test, overrides: dict, cache: Path) -> dict:
    """Training seconds and detection images per second of `kind` on `device`."""
    config = load_config(None, [{"detector": kind, "device": device, "cache_dir": str(cache)}, overrides])
    model = build_detector(config)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.fit(train)
    if device == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start
    images = [s.image_path for s in test]
    model.detect(images[0])  # warm-up: kernels, allocator
    start = time.perf_counter()
    for path in images:
        model.detect(path)
    if device == "cuda":
        torch.cuda.synchronize()
    detect_seconds = time.perf_counter() - start
    return {"train_seconds": train_seconds, "detect_images_per_second": len(images) / detect_seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=40, help="optimiser steps of each training")
    p.add_argument("--epochs", type=int, default=2, help="the localiser's epochs")
    p.add_argument("--images", type=int, default=40, help="synthetic images (a fifth are the test split)")
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/bench-gpu")
    args = p.parse_args()
    log_to_stderr()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    card = torch.cuda.get_device_name(0) if "cuda" in devices else None
    print(f"devices: cpu{f', cuda ({card})' if card else ' only (no CUDA device: the GPU columns stay empty)'}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic(Path(tmp) / "synth", args.images, seed=0)
        train = load_dataset(Path(tmp) / "synth", split="train")
        test = load_dataset(Path(tmp) / "synth", split="test")
        for kind in DETECTORS:
            overrides = short(kind, args.iterations, args.epochs)
            rows[kind] = {"overrides": overrides}
            for device in devices:
                rows[kind][device] = measure(kind, device, train, test, overrides, Path(tmp) / "cache" / kind / device)
    print("\n| detector | train s (cpu) | train s (cuda) | x | detect img/s (cpu) | detect img/s (cuda) | x |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, row in rows.items():
        cpu, gpu = row["cpu"], row.get("cuda")
        cells = [f"{cpu['train_seconds']:.1f}", "", "", f"{cpu['detect_images_per_second']:.2f}", "", ""]
        if gpu:
            cells[1] = f"{gpu['train_seconds']:.1f}"
            cells[2] = f"{cpu['train_seconds'] / gpu['train_seconds']:.1f}"
            cells[4] = f"{gpu['detect_images_per_second']:.2f}"
            cells[5] = f"{gpu['detect_images_per_second'] / cpu['detect_images_per_second']:.1f}"
        print(f"| {kind} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"card": card, "cpu_threads": torch.get_num_threads(), "rows": rows, "meta": run_record()}
    (args.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
