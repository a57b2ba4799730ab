"""Every detector with its default settings on every dataset at hand: no per-dataset tuning.

Datasets: the synthetic set (``data/synth``, as `make demo` makes it), the small-dense preset
(``data/dense``: 6 to 24 small touching objects per image), cards and raccoon from
``../shared/data`` when they are there, and ``--data PATH`` (a user's own: ``train/`` and
``test/`` folders or a VOC root). Detectors: those named in the config's ``detectors`` (each
built from ``{"detector": kind}`` and nothing else but the cache folder).

Each arm trains in a process of its own (so its peak memory is its own): wall and CPU seconds
of training (its worker processes included), peak resident memory; then on the test split
(R-CNN's test rule, the default): VOC mAP@0.5, COCO AP and AP small / medium / large, and for
each class where its precision-recall curve ends (the recall its detections reach at IoU 0.5)
and the precision there. Fitted models are cached (``cache/NAME/models``): a re-run only
scores; each arm's result is written as soon as it is done, so an interrupted run keeps them.

    .venv/bin/python experiments/generalization.py [--only cards,raccoon,faster_rcnn] [--data PATH]

(``make experiment-generalization``; ``--only`` names datasets, detectors or both; rows of
earlier runs stay in the report.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import CARDS, SYNTH, Report, Target, fit_or_load, splits, table  # noqa: E402

from rcnn.config import load_toml  # noqa: E402
from rcnn.datasets import load_dataset  # noqa: E402
from rcnn.detectors import load_config  # noqa: E402
from rcnn.evaluation import evaluate_coco, evaluate_voc  # noqa: E402

RACCOON = CARDS.parent / "raccoon"
DETECTOR_NAMES = {"rcnn", "fast_rcnn", "faster_rcnn", "localizer", "yolo", "ssd", "centernet"}  # --only names these too
DENSE = harness.ROOT / "data" / "dense"

COLUMNS = [
    ("detector", "detector"),
    ("mAP50", "VOC mAP@0.5"),
    ("coco_AP", "COCO AP"),
    ("AP_small", "AP small"),
    ("AP_medium", "AP medium"),
    ("AP_large", "AP large"),
    ("lowest_end_recall", "lowest class end recall"),
    ("train_seconds", "train s", 0),
    ("train_cpu_seconds", "train CPU s", 0),
    ("peak_rss_mb", "peak MB", 0),
    ("iterations", "SGD steps", 0),
]


def datasets(args) -> list[Target]:
    from rcnn.datasets.synthetic import make_synthetic

    wanted = set(args.only.split(",")) if args.only else None
    if wanted is not None and not wanted - DETECTOR_NAMES:  # --only names detectors alone: every dataset
        wanted = None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    out = []
    if want("synthetic"):
        make_synthetic(SYNTH, 200, 0)
        out.append(Target("synthetic", load_dataset(SYNTH, split="train"), load_dataset(SYNTH, split="test"), None))
    if want("dense"):
        make_synthetic(DENSE, 200, 0, preset="dense")
        out.append(Target("dense", load_dataset(DENSE, split="train"), load_dataset(DENSE, split="test"), None))
    for name, path in (("cards", CARDS), ("raccoon", RACCOON)):
        if not want(name):
            continue
        if path.is_dir():
            out.append(Target(name, load_dataset(path / "train"), load_dataset(path / "test"), None))
        else:
            print(f"{path} not found: {name} left out")
    if args.data:
        path = Path(args.data).resolve()
        if want(path.name):
            out.append(Target(path.name, *splits(path), None))
    return out


def end_of_curves(voc) -> dict:
    """Per class: the recall the precision-recall curve reaches at its end and the precision
    there (0 and None for a class without detections)."""
    out = {}
    for name, recall, precision, npos in zip(voc.classes, voc.recall, voc.precision, voc.npos):
        if npos == 0:
            continue
        out[name] = {
            "recall": float(recall[-1]) if len(recall) else 0.0,
            "precision": float(precision[-1]) if len(precision) else None,
            "objects": int(npos),
        }
    return out


def arm_config(kind: str, cache, overrides: dict | None = None):
    """`kind`'s defaults caching under `cache`; `overrides` (the experiment config's
    ``overrides.KIND``, empty in the shipped config: tests shrink the detectors with it)."""
    return load_config(None, [{"detector": kind, "cache_dir": str(cache)}, overrides or {}])


def train_arm(kind: str, target: str, cache: str, result: str, data: str | None, overrides: dict) -> None:
    """In a child process: fit (or load) `kind`'s defaults on `target`'s train split and write
    the fit statistics to `result`. A fresh fit adds its wall and CPU seconds (this process and
    its workers) and its peak resident memory, also to the model cache's record, so a warm
    re-run reports the first fit's cost."""
    data_set = {t.name: t for t in datasets(argparse.Namespace(only=target, data=data))}[target]
    config = arm_config(kind, cache, overrides)
    start = time.perf_counter()
    model, info = fit_or_load(config, data_set.train)
    if not info["from_cache"]:
        own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        info.update(
            train_wall_seconds=time.perf_counter() - start,
            train_cpu_seconds=own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime,
            peak_rss_mb=max(own.ru_maxrss, workers.ru_maxrss) / 1024,
            iterations=training_steps(model.config, len(data_set.train)),
        )
        record = Path(info["path"]).with_suffix(".json")
        record.write_text(json.dumps({k: v for k, v in info.items() if k not in ("from_cache", "path")}, indent=1))
    Path(result).write_text(json.dumps(info, default=str))


def training_steps(config, n: int) -> int | None:
    """SGD steps the network took: Fast and Faster R-CNN's and the dense detectors' iterations, R-CNN's fine-tuning
    iterations, the localiser's batches over all its epochs."""
    if hasattr(config, "train"):
        return config.train.iterations
    if hasattr(config, "finetune"):
        return config.finetune.iterations
    if hasattr(config, "epochs"):
        return config.epochs * -(-n // config.batch_size)
    return None


def run_arm(kind: str, target: Target, cache: Path, data: str | None, overrides: dict | None = None) -> dict:
    """Train `kind` on `target` in a child process, then score it here on the test split."""
    result = cache / f"{kind}.fit.json"
    cmd = [sys.executable, __file__, "--arm", kind, target.name, str(cache), str(result), json.dumps(overrides or {})]
    subprocess.run(cmd + (["--data", data] if data else []), check=True)
    info = json.loads(result.read_text())
    model, _ = fit_or_load(arm_config(kind, cache, overrides), target.train)
    dets = model.detect_dataset(target.test)
    voc = evaluate_voc(target.test, dets)
    coco = evaluate_coco(target.test, dets)
    ends = end_of_curves(voc)
    return {
        "detector": kind,
        "mAP50": voc.mAP,
        "coco_AP": coco["AP"],
        "AP_small": coco["APsmall"],
        "AP_medium": coco["APmedium"],
        "AP_large": coco["APlarge"],
        "per_class_AP50": voc.to_dict()["per_class"],
        "end_of_curves": ends,
        "lowest_end_recall": min((e["recall"] for e in ends.values()), default=None),
        "detections": int(sum(len(d.boxes) for d in dets.values())),
        "objects": int(voc.npos.sum()),
        "train_seconds": info.get("train_wall_seconds"),
        "train_cpu_seconds": info.get("train_cpu_seconds"),
        "peak_rss_mb": info.get("peak_rss_mb"),
        "iterations": info.get("iterations"),
        "fit_stats": {k: v for k, v in info.items() if k != "path"},
    }


def run(args) -> None:
    spec = load_toml(args.config)["experiment"]
    report = Report(args, spec["title"], spec["intro"])
    cache_root = harness.ROOT / spec["cache"]
    previous = Path(args.out) / "results.json"
    results = json.loads(previous.read_text()) if previous.is_file() else {}
    results.pop("meta", None)
    named = set(args.only.split(",")) & set(spec["detectors"]) if args.only else set()
    detectors = [k for k in spec["detectors"] if not named or k in named]
    for target in datasets(args):
        rows = results.setdefault(target.name, {})
        rows["_size"] = (
            f"train {len(target.train)} images, test {len(target.test)} images, {len(target.train.classes)} classes"
        )
        for kind in detectors:
            cache = cache_root / target.name
            cache.mkdir(parents=True, exist_ok=True)
            print(f"== {target.name}: {kind}")
            row = run_arm(kind, target, cache, args.data, spec.get("overrides", {}).get(kind))
            rows[kind] = row
            print(json.dumps({k: row[k] for k, *_ in COLUMNS}))
            report.lines, report.results = render(results, spec["detectors"]), results
            report.write()  # after every arm: an interrupted run keeps what it measured


def render(results: dict, detectors: list[str]) -> list[str]:
    """The report's tables: one per dataset in `results` (those of earlier runs included)."""
    lines = []
    for name, rows in results.items():
        lines += [f"## {name}", "", rows.get("_size", ""), ""]
        done = [k for k in detectors if k in rows]
        lines += table([rows[k] for k in done], COLUMNS)
        lines += ["", "Where each class's precision-recall curve ends (recall at IoU 0.5, precision there):", ""]
        for kind in done:
            ends = rows[kind]["end_of_curves"]
            shown = ", ".join(
                f"{c} {e['recall']:.3f} ({e['precision'] or 0:.2f}, {e['objects']} objects)" for c, e in ends.items()
            )
            lines.append(f"- {kind}: {shown}")
        lines.append("")
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--arm":  # one arm's training, in its own process (run_arm)
        _, _, kind, target, cache, result, overrides, *rest = sys.argv
        train_arm(kind, target, cache, result, rest[1] if rest[:1] == ["--data"] else None, json.loads(overrides))
        sys.exit(0)
    sys.exit(harness.script_main("generalization", __doc__, run))
