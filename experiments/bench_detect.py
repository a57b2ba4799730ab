"""Detection speed of the three detectors: R-CNN (experiments/configs/cards.toml's settings),
Fast R-CNN (experiments/configs/fast_cards.toml's) and Faster R-CNN (faster_cards.toml's),
seconds per image at 2000 and 500 proposals, split into the stages of each `detect`; the
network time (everything after the proposals) and the totals with proposals, and their
ratios. Faster R-CNN proposes with its own RPN (``rpn.post_nms_top_n_test`` boxes), so its
time per image is one figure, proposals included, set against Fast R-CNN's with Selective
Search at each count.

Small real detectors are trained first (a minute or two): on 16 cards/train photos with 48
Selective Search boxes each when ../shared/data/cards is present, else on a generated
synthetic set; R-CNN without fine-tuning, Fast R-CNN for a few iterations (training length
does not change detection speed). Each timed image gets the default Selective Search
proposals (about 1000 on a cards photo) topped up with sliding windows to exactly 2000 boxes,
the first 500 of them for the 500 runs; both detectors get the same boxes, and they run in
turn on each image so all see the same machine load. Faster R-CNN is trained for a few
iterations on the same photos (its detection time does not depend on how long it trained:
the RPN keeps its fixed number of boxes), or `--faster-model` times a trained model file.

    .venv/bin/python experiments/bench_detect.py [--images 3] [--proposals 2000 500] [--faster-model M.pt]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rcnn.datasets import read_image
from rcnn.datasets.synthetic import make_synthetic
from rcnn.datasets.voc import read_voc_folder
from rcnn.detectors import build_detector, load_config, load_model
from rcnn.proposals import make_proposer

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / ".." / "shared" / "data" / "cards"
CONFIGS = {
    "R-CNN": ROOT / "experiments/configs/cards.toml",
    "Fast R-CNN": ROOT / "experiments/configs/fast_cards.toml",
    "Faster R-CNN": ROOT / "experiments/configs/faster_cards.toml",
}
SMALL = {
    "R-CNN": {"finetune": {"iterations": 0}},
    "Fast R-CNN": {"train": {"iterations": 10, "checkpoint_every": 1000}},
    "Faster R-CNN": {"train": {"iterations": 10, "checkpoint_every": 1000}},
}
PROPOSING = ("R-CNN", "Fast R-CNN")  # the detectors given the external proposals


def data(tmp: Path, train_images: int):
    """The training subset, the images to time, and a line saying what they are."""
    if (CARDS / "train").is_dir() and (CARDS / "test").is_dir():
        ds = read_voc_folder(CARDS / "train", check_images=False)
        ds = ds.subset([s.id for s in ds.samples[:train_images]])
        return (
            ds,
            sorted((CARDS / "test").glob("*.jpg")),
            f"cards: trained on {len(ds)} cards/train photos, timed on cards/test",
        )
    synth = make_synthetic(tmp / "synth", images=train_images + 8, seed=0, size=512, test_fraction=0.3)
    ds = synth.subset([s.id for s in synth.samples[:train_images]])
    return (
        ds,
        [Path(s.image_path) for s in synth.samples[train_images:]],
        f"synthetic (no {CARDS.resolve()}): trained on {len(ds)} 512 px images, timed on others",
    )


def train(tmp: Path, name: str, ds, max_proposals: int):
    overrides = {"cache_dir": str(tmp / "cache"), **SMALL[name]}
    if name in PROPOSING:
        overrides["proposals"] = {"method": "selective_search", "max_boxes": 48}
    if name == "Fast R-CNN":
        overrides["test_proposals"] = max_proposals
    start = time.perf_counter()
    model = build_detector(load_config(CONFIGS[name], overrides)).fit(ds)
    return model, time.perf_counter() - start


def proposals_for(image: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Default Selective Search boxes topped up with sliding windows to exactly `count`, and
    how many came from Selective Search."""
    boxes = make_proposer("selective_search", max_boxes=count)(image)
    found = len(boxes)
    if found < count:
        windows = make_proposer("sliding_window", max_boxes=count)(image)
        boxes = np.concatenate([boxes, windows])
    return np.ascontiguousarray(boxes[:count]), found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3, help="images timed (default 3)")
    ap.add_argument("--proposals", type=int, nargs="+", default=[2000, 500], help="boxes per image (default 2000 500)")
    ap.add_argument("--train-images", type=int, default=16)
    ap.add_argument(
        "--faster-model", metavar="MODEL.pt", help="time this Faster R-CNN model file instead of training one"
    )
    args = ap.parse_args(argv)
    counts = sorted(args.proposals, reverse=True)

    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        ds, test, what = data(Path(tmp), args.train_images)
        models = {}
        for name in CONFIGS:
            if name == "Faster R-CNN" and args.faster_model:
                models[name] = load_model(args.faster_model)
                what += f"; Faster R-CNN from {args.faster_model}"
                continue
            models[name], seconds = train(Path(tmp), name, ds, counts[0])
            what += f"; {name} trained in {seconds:.0f} s"
        test = test[: args.images]
        if not test:
            sys.exit("no images to time")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(
            f"{what}\nmachine: {os.cpu_count()} CPUs ({cpus} usable), torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; load average before timing {os.getloadavg()[0]:.2f}"
        )
        r, f = models["R-CNN"].config, models["Fast R-CNN"].config
        print(
            f"R-CNN: {r.features.backbone} crops {r.features.crop_size} px, pool {r.features.pool}, "
            f"classifier {r.classifier}, box regression {r.box_regression}"
        )
        print(
            f"Fast R-CNN: {f.backbone.name} to stride 16, scale {f.scale} (max {f.max_size}), RoI {f.roi.mode} "
            f"{f.roi.output_size}x{f.roi.output_size}, fc {list(f.head.fc)}, svd_rank {f.svd_rank}"
        )
        g = models["Faster R-CNN"].config
        print(
            f"Faster R-CNN: {g.backbone.name} to stride 16, scale {g.scale} (max {g.max_size}), anchors "
            f"{list(g.anchors.sizes)} x {list(g.anchors.ratios)}, RPN {g.rpn.post_nms_top_n_test} boxes after NMS, "
            f"RoI align {g.roi.output_size}x{g.roi.output_size}, fc {list(g.head.fc)}"
        )

        first = read_image(test[0])  # warm-up: TorchScript compiles on the first call
        for name in PROPOSING:
            models[name].detect(first, proposals=np.array([[0, 0, 50, 50]] * 16, np.float32))
        models["Faster R-CNN"].detect(first)
        timings = {(name, n): {} for name in PROPOSING for n in counts}
        faster: dict = {}
        loads = []
        for path in test:
            image = read_image(path)
            start = time.perf_counter()
            boxes, from_ss = proposals_for(image, counts[0])
            seconds = time.perf_counter() - start
            for n in counts:
                for name in PROPOSING:
                    t = timings[(name, n)]
                    t["proposals"] = t.get("proposals", 0.0) + seconds
                    models[name].detect(image, proposals=boxes[:n], timings=t)
            models["Faster R-CNN"].detect(image, timings=faster)
            loads.append(os.getloadavg()[0])
            print(
                f"  {path.name} {image.shape[1]}x{image.shape[0]}: {from_ss} Selective Search boxes "
                f"+ {len(boxes) - from_ss} sliding windows",
                flush=True,
            )

    k = len(test)
    print(f"\nseconds per image over {k} images (proposals: Selective Search + windows, computed once per image)")
    faster_total = sum(faster.values()) / k
    stages = ", ".join(f"{s} {v / k:.3f}" for s, v in faster.items())
    print(f"\nFaster R-CNN (its RPN proposes): total {faster_total:7.3f}   ({stages})")
    for n in counts:
        print(f"\n{n} proposals")
        net = {}
        for name in PROPOSING:
            t = timings[(name, n)]
            stages = ", ".join(f"{s} {v / k:.3f}" for s, v in t.items() if s != "proposals")
            net[name] = sum(v for s, v in t.items() if s != "proposals") / k
            total = net[name] + t["proposals"] / k
            print(f"  {name:<11} network {net[name]:7.3f}   total with proposals {total:7.3f}   ({stages})")
        props = timings[("R-CNN", n)]["proposals"] / k
        print(
            f"  ratio R-CNN / Fast R-CNN: network {net['R-CNN'] / net['Fast R-CNN']:.1f}x, "
            f"with proposals {(net['R-CNN'] + props) / (net['Fast R-CNN'] + props):.1f}x"
        )
        print(
            f"  ratio Fast R-CNN with Selective Search / Faster R-CNN, proposals included: "
            f"{(net['Fast R-CNN'] + props) / faster_total:.1f}x"
        )
    print(
        f"\nload average during timing: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} CPUs (shared machine)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
