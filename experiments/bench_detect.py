"""Detection speed: seconds per image with 2000 proposals at 224 px crops, split into the
stages of `RCNN.detect` (proposals, warp, CNN, heads, NMS), beside the CNN's own forward time
on the same number of crops. Target: everything but the CNN under 30 % of the total.

A small real detector is trained first (a minute): on 16 cards/train photos with 48 Selective
Search boxes each when ../shared/data/cards is present, else on a generated synthetic set.
Each timed image then gets the default Selective Search proposals (all of them; about 1000 on
a cards photo) topped up with sliding windows to exactly 2000 boxes; both count as the
proposals stage. The CNN reference runs `FeatureExtractor.forward` on 2000 ready-made crops
(the same batch size, cycling over a few warped batches), half just before and half just
after each image's detection, so both see the same machine load.

    .venv/bin/python experiments/bench_detect.py [--images 3] [--proposals 2000] [--model PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import rcnn  # noqa: F401  before torch: its OMP_WAIT_POLICY=PASSIVE default must be set when torch loads
import numpy as np
import torch
from rcnn.datasets import read_image
from rcnn.datasets.synthetic import make_synthetic
from rcnn.datasets.voc import read_voc_folder
from rcnn.detectors import RCNN, load_config
from rcnn.proposals import make_proposer

CARDS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cards"
STAGES = ("proposals", "warp", "cnn", "heads", "nms")
TARGET = 0.30


def train(tmp: Path, crop_size: int, train_images: int) -> tuple[RCNN, list[Path], str]:
    """A small fitted detector and the images to time, with a line saying what they are."""
    overrides = {"cache_dir": str(tmp / "cache"), "proposals": {"method": "selective_search", "max_boxes": 48},
                 "features": {"crop_size": crop_size}}
    if (CARDS / "train").is_dir() and (CARDS / "test").is_dir():
        data = read_voc_folder(CARDS / "train", check_images=False)
        data = data.subset([s.id for s in data.samples[:train_images]])
        test = sorted((CARDS / "test").glob("*.jpg"))
        what = f"cards: trained on {len(data)} cards/train photos, timed on cards/test photos"
    else:
        synth = make_synthetic(tmp / "synth", images=train_images + 8, seed=0, size=512, test_fraction=0.3)
        data = synth.subset([s.id for s in synth.samples[:train_images]])
        test = [Path(s.image_path) for s in synth.samples[train_images:]]
        what = f"synthetic (no {CARDS.resolve()}): trained on {len(data)} 512 px images, timed on others"
    start = time.perf_counter()
    model = RCNN(load_config(overrides=overrides)).fit(data)
    what += f"; training took {time.perf_counter() - start:.0f} s"
    return model, test, what


def proposals_for(image: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Default Selective Search boxes topped up with sliding windows to exactly `count`, and
    how many came from Selective Search."""
    boxes = make_proposer("selective_search", max_boxes=count)(image)
    found = len(boxes)
    if found < count:
        windows = make_proposer("sliding_window", max_boxes=count)(image)
        boxes = np.concatenate([boxes, windows])
    return np.ascontiguousarray(boxes[:count]), found


def cnn_only(model: RCNN, image: np.ndarray, boxes: np.ndarray) -> float:
    """Seconds for `FeatureExtractor.forward` over ``len(boxes)`` crops, in the detector's batches."""
    ex = model.extractor_
    bs = ex.config.batch_size
    pool = [ex.crops(image, boxes[i:i + bs]) for i in range(0, min(len(boxes), 8 * bs), bs)]
    start = time.perf_counter()
    for j, i in enumerate(range(0, len(boxes), bs)):
        batch = pool[j % len(pool)]
        ex.forward(batch[: len(boxes) - i])
    return time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3, help="images timed (default 3)")
    ap.add_argument("--proposals", type=int, default=2000, help="boxes per image (default 2000)")
    ap.add_argument("--crop-size", type=int, default=224, help="crop side of the trained model (default 224)")
    ap.add_argument("--train-images", type=int, default=16)
    ap.add_argument("--model", help="time this saved model instead of training one")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        if args.model:
            model = RCNN.load(args.model)
            test = sorted((CARDS / "test").glob("*.jpg"))
            what = f"model {args.model}, timed on cards/test photos"
        else:
            model, test, what = train(Path(tmp), args.crop_size, args.train_images)
        test = test[: args.images]
        if not test:
            sys.exit("no images to time")
        ex = model.extractor_
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"{what}\nmachine: {os.cpu_count()} CPUs ({cpus} usable), torch {torch.__version__} with "
              f"{torch.get_num_threads()} threads; load average before timing {os.getloadavg()[0]:.2f}")
        print(f"detector: {ex.config.backbone} ({ex.weights_source}), crops {ex.config.crop_size} px, "
              f"batch {ex.config.batch_size}, frozen={ex.config.frozen}, warp {ex.config.warp}, "
              f"classifier {model.config.classifier}, box regression {model.regressor_ is not None}")

        ex.forward(ex.crops(read_image(test[0]), np.array([[0, 0, 50, 50]] * ex.config.batch_size, np.float32)))
        timings = dict.fromkeys(STAGES, 0.0)
        reference = 0.0
        loads = []
        for path in test:
            image = read_image(path)
            start = time.perf_counter()
            boxes, from_ss = proposals_for(image, args.proposals)
            timings["proposals"] += time.perf_counter() - start
            half = len(boxes) // 2 // ex.config.batch_size * ex.config.batch_size
            reference += cnn_only(model, image, boxes[:half])  # half before, half after: same load
            dets = model.detect(image, proposals=boxes, timings=timings)
            reference += cnn_only(model, image, boxes[half:])
            loads.append(os.getloadavg()[0])
            print(f"  {path.name} {image.shape[1]}x{image.shape[0]}: {from_ss} Selective Search boxes "
                  f"+ {len(boxes) - from_ss} sliding windows, {len(dets)} detections", flush=True)

    n = len(test)
    total = sum(timings.values())
    print(f"\nseconds per image over {n} images, {args.proposals} proposals each, {ex.config.crop_size} px crops")
    print(f"{'stage':<12}{'s/image':>10}{'share':>9}")
    for stage in STAGES:
        print(f"{stage:<12}{timings[stage] / n:>10.3f}{timings[stage] / total:>9.1%}")
    print(f"{'total':<12}{total / n:>10.3f}{1:>9.1%}")
    other = total - timings["cnn"]
    print(f"\nCNN alone (FeatureExtractor.forward on {args.proposals} ready crops): {reference / n:.3f} s/image "
          f"({args.proposals * n / reference:.1f} crops/s); CNN stage in detect / CNN alone: "
          f"{timings['cnn'] / reference:.2f}; whole detection / CNN alone: {total / reference:.2f}")
    print(f"everything but the CNN: {other / n:.3f} s/image = {other / total:.1%} of the total "
          f"(without proposals: {(other - timings['proposals']) / total:.1%}); target < {TARGET:.0%}: "
          f"{'PASS' if other / total < TARGET else 'FAIL'}")
    print(f"load average during timing: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} CPUs (shared machine)")
    return 0 if other / total < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
