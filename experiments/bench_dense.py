"""Detection speed of the dense detectors against Faster R-CNN's: YOLO, SSD and Objects as Points
(CenterNet) with their defaults (experiments/configs/{yolo,ssd,centernet}_cards.toml) and Faster
R-CNN with faster_cards.toml's, all at the SAME input size (``--scale``, ``--max-size``: shortest
side and longest cap for every detector, default 378 / 630, what the defaults choose on the cards
photos), seconds per image of `detect` (median and mean over the images, and the mean of each
stage of its ``timings``: ``trunk``, ``rpn``, ``head``, ``nms``), and each detector's ratio to
Faster R-CNN's median measured in the same run. The target it checks: SSD and CenterNet faster
than Faster R-CNN, YOLO the fastest of the four.

The models: by default each is trained here on the first ``--train-images`` cards/train photos
(../shared/data/cards) when present, else on a generated synthetic set, with its config's own
schedule (20 epochs of those images, the warm-up and the step at 14 epochs) or ``--iterations``
steps. A detector's time depends on its training: boxes reaching the score threshold go through
per-class NMS (the dense heads score thousands of boxes, Faster R-CNN's head its 300 proposals x
the classes), and an untrained head lets most of them through. So the output gives each
detector's candidates per image (boxes reaching the threshold, before NMS) and says where they
look untrained; ``--models faster=M.pt yolo=M.pt ssd=M.pt centernet=M.pt`` (any of them) times
trained model files instead (run at ``--scale`` / ``--max-size`` whatever size they were trained
at; the output says which models were trained here and which loaded). Every detector gets an
untimed warm-up call first (``--warmup`` calls; TorchScript freezes its trunk on the first),
then they run in turn on each image, the order rotated from image to image, so all see the same
machine load. ``--device cuda`` synchronises before and after each call (the stage split is then
approximate). No results file (as ``make bench-detect``): the table is printed, and `main`
returns it.

    .venv/bin/python experiments/bench_dense.py [--images 10] [--scale 378 --max-size 630]
        [--train-images 16] [--iterations N] [--models faster=M.pt ...] [--device cpu|cuda] [--synthetic]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from rcnn.datasets import read_image
from rcnn.datasets.synthetic import make_synthetic
from rcnn.datasets.voc import read_voc_folder
from rcnn.detectors import build_detector, load_config, load_model

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / ".." / "shared" / "data" / "cards"
# name on the command line -> (kind, title, config)
DETECTORS = {
    "faster": ("faster_rcnn", "Faster R-CNN", ROOT / "experiments/configs/faster_cards.toml"),
    "yolo": ("yolo", "YOLO", ROOT / "experiments/configs/yolo_cards.toml"),
    "ssd": ("ssd", "SSD", ROOT / "experiments/configs/ssd_cards.toml"),
    "centernet": ("centernet", "CenterNet", ROOT / "experiments/configs/centernet_cards.toml"),
}
REFERENCE = "faster"
UNTRAINED = 1000  # candidates per image (before NMS) above which a model looks untrained


def first_covering(ds, n: int):
    """The first `n` images of `ds`, and for each class they leave without an object the first
    image that has one (every class needs a training object)."""
    chosen = list(ds.samples[:n])
    for label in range(1, len(ds.classes) + 1):
        if not any((s.labels == label).any() for s in chosen):
            chosen += [s for s in ds.samples if (s.labels == label).any()][:1]
    return ds.subset([s.id for s in chosen])


def data(tmp: Path, train_images: int, timed_images: int, synthetic: bool):
    """The training subset, the image paths to time, and a line saying what they are."""
    if not synthetic and (CARDS / "train").is_dir() and (CARDS / "test").is_dir():
        ds = first_covering(read_voc_folder(CARDS / "train", check_images=False), train_images)
        return ds, sorted((CARDS / "test").glob("*.jpg")), f"cards: {len(ds)} cards/train photos, timed on cards/test"
    synth = make_synthetic(tmp / "synth", images=train_images + timed_images, seed=0, size=512, test_fraction=0.3)
    ds = synth.subset([s.id for s in synth.samples[:train_images]])
    where = "--synthetic" if synthetic else f"no {CARDS.resolve()}"
    return (
        ds,
        [Path(s.image_path) for s in synth.samples[train_images:]],
        f"synthetic ({where}): {len(ds)} 512 px images, timed on {timed_images} others",
    )


def train(name: str, ds, args, tmp: Path):
    """Detector `name` fitted on `ds` at the benchmark's input size, and its training seconds."""
    kind, _, path = DETECTORS[name]
    overrides = {"cache_dir": str(tmp / "cache" / name), "scale": args.scale, "max_size": args.max_size}
    overrides["device"] = args.device
    overrides["train"] = {"checkpoint_every": 10**6}
    if args.iterations:
        overrides["train"] |= {"iterations": args.iterations, "warmup": min(100, args.iterations // 4)}
    config = load_config(path, overrides)
    assert config.detector == kind, (path, config.detector)
    start = time.perf_counter()
    model = build_detector(config).fit(ds)
    return model, time.perf_counter() - start


def loaded(name: str, path: str, args):
    """Detector `name` from model file `path`, run at the benchmark's input size, and a line on it."""
    kind, title, _ = DETECTORS[name]
    model = load_model(path, device=args.device)
    if model.config.detector != kind:
        sys.exit(f"--models {name}={path}: a {model.config.detector} model, not {kind}")
    was = (model.config.scale, model.config.max_size)
    model.config = replace(model.config, scale=args.scale, max_size=args.max_size)  # the size is read per image
    return model, f"{title} loaded from {path} (trained at {was[0]}/{was[1]})"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_all(models: dict, images: list[Path], device: str) -> dict:
    """Per detector: seconds of each image's `detect` (``seconds``), the stages summed over the
    images (``stages``), and candidates (before NMS) and detections per image. `detect` is
    ``trace(image).detections``: `trace` is called so the candidates are counted at no extra cost."""
    out = {n: {"seconds": [], "stages": {}, "candidates": [], "detections": []} for n in models}
    names = list(models)
    for i, path in enumerate(images):
        image = read_image(path)
        for name in names[i % len(names) :] + names[: i % len(names)]:
            r = out[name]
            sync(device)
            start = time.perf_counter()
            trace = models[name].trace(image, timings=r["stages"])
            sync(device)
            r["seconds"].append(time.perf_counter() - start)
            candidates = trace.stage("regression")
            r["candidates"].append(len(candidates) if candidates is not None else 0)
            r["detections"].append(len(trace.detections))
        print(f"  {path.name} {image.shape[1]}x{image.shape[0]}", flush=True)
    return out


def summarize(raw: dict, images: int) -> dict:
    """The table's rows: median and mean s/img, stage means, ratios to the reference's median and
    mean, candidates and detections per image."""
    ref = raw[REFERENCE]["seconds"]
    ref_median, ref_mean = statistics.median(ref), statistics.fmean(ref)
    rows = {}
    for name, r in raw.items():
        median, mean = statistics.median(r["seconds"]), statistics.fmean(r["seconds"])
        rows[name] = {
            "title": DETECTORS[name][1],
            "median": median,
            "mean": mean,
            "stages": {s: v / images for s, v in r["stages"].items()},
            "ratio_median": median / ref_median,
            "ratio_mean": mean / ref_mean,
            "candidates": statistics.fmean(r["candidates"]),
            "detections": statistics.fmean(r["detections"]),
            "seconds": r["seconds"],
        }
    return rows


def verdict(rows: dict) -> dict:
    """The target, on medians: SSD and CenterNet faster than Faster R-CNN, YOLO the fastest."""
    ref = rows[REFERENCE]["median"]
    fastest = min(rows, key=lambda n: rows[n]["median"])
    return {
        "ssd_faster_than_faster_rcnn": rows["ssd"]["median"] < ref,
        "centernet_faster_than_faster_rcnn": rows["centernet"]["median"] < ref,
        "yolo_fastest": fastest == "yolo",
        "fastest": fastest,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10, help="images timed (default 10)")
    ap.add_argument("--scale", type=int, default=378, help="shortest side, every detector (default 378)")
    ap.add_argument("--max-size", type=int, default=630, help="longest side at most, every detector (default 630)")
    ap.add_argument("--train-images", type=int, default=16, help="training images of the models trained here")
    ap.add_argument("--iterations", type=int, default=0, help="training steps (0: each config's 20 epochs)")
    ap.add_argument("--models", nargs="+", default=[], metavar="NAME=MODEL.pt", help=f"names: {', '.join(DETECTORS)}")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls of each detector first (default 1)")
    ap.add_argument("--synthetic", action="store_true", help="a generated synthetic set even when cards is present")
    args = ap.parse_args(argv)
    files = dict(m.split("=", 1) for m in args.models if "=" in m)
    if len(files) != len(args.models) or not set(files) <= set(DETECTORS):
        ap.error(f"--models takes NAME=PATH with NAME one of {', '.join(DETECTORS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")

    with tempfile.TemporaryDirectory(prefix="bench-dense-") as tmp:
        ds, images, what = data(Path(tmp), args.train_images, args.images, args.synthetic)
        images = images[: args.images]
        if not images:
            sys.exit("no images to time")
        models, lines = {}, []
        for name, (_, title, _) in DETECTORS.items():
            if name in files:
                models[name], line = loaded(name, files[name], args)
            else:
                models[name], seconds = train(name, ds, args, Path(tmp))
                its = models[name].fit_stats_.get("iterations")
                line = f"{title} trained here: {its} iterations in {seconds:.0f} s"
            lines.append(line)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        card = f", {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""
        print(f"data: {what}")
        print("models: " + "; ".join(lines))
        print(
            f"input size: shortest side {args.scale} px, longest at most {args.max_size} px, every detector\n"
            f"machine: {os.cpu_count()} CPUs ({cpus} usable), torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, device {args.device}{card}; "
            f"load average before timing {os.getloadavg()[0]:.2f}"
        )
        first = read_image(images[0])
        for model in models.values():  # warm-up: TorchScript freezes the trunk on the first call
            for _ in range(args.warmup):
                model.detect(first)
        sync(args.device)
        loads = [os.getloadavg()[0]]
        raw = time_all(models, images, args.device)
        loads.append(os.getloadavg()[0])

    rows = summarize(raw, len(images))
    result = {"rows": rows, "verdict": verdict(rows), "images": len(images), "scale": args.scale}
    result |= {"max_size": args.max_size, "models": lines, "data": what, "device": args.device}
    print(table(result))
    print(f"load average during timing: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} CPUs (shared machine)")
    return result


def table(result: dict) -> str:
    """The printed table and the verdict lines."""
    rows, v = result["rows"], result["verdict"]
    stages = sorted({s for r in rows.values() for s in r["stages"]}, key=["trunk", "rpn", "head", "nms"].index)
    out = [
        f"\nseconds per image of detect over {result['images']} images at {result['scale']}/{result['max_size']} px "
        f"({result['device']}); ratio: to Faster R-CNN's in this run",
        "",
        "| detector | median s/img | mean s/img | ratio (median) | ratio (mean) | "
        + " | ".join(f"{s} (mean)" for s in stages)
        + " | candidates/img | detections/img |",
        "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in stages) + " | ---: | ---: |",
    ]
    for r in rows.values():
        cells = [f"{r['median']:.3f}", f"{r['mean']:.3f}", f"{r['ratio_median']:.2f}x", f"{r['ratio_mean']:.2f}x"]
        cells += [f"{r['stages'][s]:.3f}" if s in r["stages"] else "" for s in stages]
        cells += [f"{r['candidates']:.0f}", f"{r['detections']:.1f}"]
        out.append(f"| {r['title']} | " + " | ".join(cells) + " |")
    out.append("")
    yes = {True: "yes", False: "NO"}
    out.append(f"SSD faster than Faster R-CNN: {yes[v['ssd_faster_than_faster_rcnn']]}")
    out.append(f"CenterNet faster than Faster R-CNN: {yes[v['centernet_faster_than_faster_rcnn']]}")
    out.append(f"YOLO the fastest: {yes[v['yolo_fastest']]} (fastest: {rows[v['fastest']]['title']})")
    many = [r["title"] for r in rows.values() if r["candidates"] > UNTRAINED]
    if many:
        out.append(
            f"warning: {', '.join(many)} let more than {UNTRAINED} candidates per image reach NMS (under-trained?): "
            "their times are not a trained model's; train longer (--iterations, --train-images) or pass --models"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
