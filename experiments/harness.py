"""What every experiment shares: its datasets, cached detectors, test-time scoring from the
caches, and the report folder (report.md, results.json, PNG plots).

An experiment script reads ``experiments/configs/NAME.toml``, builds detector configs from a
per-dataset base config plus its own overrides, and writes ``experiments/results/NAME/``.
Everything expensive is cached under the configs' ``cache_dir`` (``data/cache``):

- proposals and CNN features (`rcnn.proposals.ProposalStore`, `rcnn.features.FeatureStore`);
- fine-tuning checkpoints (`rcnn.detectors.RCNN.fit`);
- fitted detectors: ``models/<key>.pt`` beside ``<key>.json`` (fit statistics), keyed by the
  full detector config, the training images and the rcnn version, so a warm re-run only
  scores the cached test features.

Datasets (`targets`): the synthetic set (``data/synth``, 200 images, made when missing, as
`make demo` makes it; base config ``demo.toml``), cards when ``../shared/data/cards`` is
there (base ``cards.toml``), or instead of cards the dataset given with ``--data PATH`` (a
folder with ``train/`` and ``test/`` sub-folders, or a VOC root with ``train`` and ``test``
splits; base ``--base-config``, by default ``cards.toml``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rcnn import __version__  # noqa: E402
from rcnn.cache import params_key, write_text  # noqa: E402
from rcnn.config import merge as merge_config  # noqa: E402
from rcnn.config import to_dict  # noqa: E402
from rcnn.datasets import load_dataset  # noqa: E402
from rcnn.datasets.core import Dataset  # noqa: E402
from rcnn.detectors import RCNN, DetectorConfig, build_detector, detector_class, load_config, load_model  # noqa: E402
from rcnn.evaluation import evaluate_coco, evaluate_voc  # noqa: E402
from rcnn.evaluation.recall import proposal_recall  # noqa: E402
from rcnn.heads.roi_trainer import RoITrainConfig, fit_to_data, train_settings  # noqa: E402
from rcnn.progress import log_to_stderr  # noqa: E402
from rcnn.reports.report import run_record, save_figure  # noqa: E402

CONFIGS = ROOT / "experiments" / "configs"
RESULTS = ROOT / "experiments" / "results"
CARDS = ROOT.parent / "shared" / "data" / "cards"
SYNTH = ROOT / "data" / "synth"  # the same set `make demo` makes: its caches are shared


@dataclass
class Target:
    """One dataset an experiment runs on: train and test splits and the base detector config."""

    name: str
    train: Dataset
    test: Dataset
    base: Path


def parse_args(name: str, doc: str | None = None, argv=None, extra=None) -> argparse.Namespace:
    """The options every experiment takes, and those `extra(parser)` adds."""
    parser = argparse.ArgumentParser(prog=f"experiments {name}", description=doc)
    parser.add_argument("--config", default=str(CONFIGS / f"{name}.toml"), help="experiment TOML file")
    parser.add_argument("--out", default=str(RESULTS / name), help="results folder")
    parser.add_argument(
        "--data", help="a dataset to run on instead of cards: a folder with train/ and test/, or a VOC root"
    )
    parser.add_argument("--base-config", default=str(CONFIGS / "cards.toml"), help="detector config for --data")
    parser.add_argument(
        "--only", help="comma-separated dataset names to run (synthetic, cards, or --data's folder name)"
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.name = name
    log_to_stderr()  # the library's messages (plans, choices, damaged caches) as the rcnn command shows them
    return args


def splits(path: Path) -> tuple[Dataset, Dataset]:
    """Train and test splits of a user dataset: sub-folders train/ and test/, else VOC splits."""
    if (path / "train").is_dir() and (path / "test").is_dir():
        return load_dataset(path / "train"), load_dataset(path / "test")
    for train in ("train", "trainval"):
        if (path / "ImageSets" / "Main" / f"{train}.txt").is_file():
            return load_dataset(path, split=train), load_dataset(path, split="test")
    raise SystemExit(
        f"{path}: expected train/ and test/ folders, or a VOC root with ImageSets/Main/train.txt and test.txt"
    )


def targets(args) -> list[Target]:
    """The datasets to run on (see the module docstring), in order."""
    from rcnn.datasets.synthetic import make_synthetic

    wanted = set(args.only.split(",")) if args.only else None
    out = []
    if wanted is None or "synthetic" in wanted:
        make_synthetic(SYNTH, 200, 0)  # reuses the folder when it already holds this set
        out.append(
            Target(
                "synthetic",
                load_dataset(SYNTH, split="train"),
                load_dataset(SYNTH, split="test"),
                CONFIGS / "demo.toml",
            )
        )
    if args.data:
        path = Path(args.data).resolve()
        out.append(Target(path.name, *splits(path), Path(args.base_config)))
    elif CARDS.is_dir():
        out.append(Target("cards", load_dataset(CARDS / "train"), load_dataset(CARDS / "test"), CONFIGS / "cards.toml"))
    else:
        print(f"{CARDS} not found: cards left out")
    return [t for t in out if wanted is None or t.name in wanted]


def merge(base: dict, *changes: dict | None) -> dict:
    """`base` with each of `changes` merged in: `rcnn.config.merge` over a detector config, the
    rule `rcnn train --set` follows too (nested tables merged key by key; a changed proposals
    ``method`` replaces the whole proposals table, dropping the old method's settings)."""
    return merge_config(base, *changes, cls=DetectorConfig)


def detector_config(base: Path, *overrides: dict | None) -> DetectorConfig:
    """The base config file with `overrides` (nested dicts of TOML tables) merged in, in order."""
    return load_config(base, overrides)


def fit_or_load(config, train: Dataset) -> tuple:
    """A detector (any kind: the config's ``detector``) fitted on `train` with `config`, from
    the model cache when it was fitted before with the same config but for its test-time
    settings (``config.TEST_TIME``; what it leaves to the data, e.g. Fast and Faster R-CNN's
    image size, resolved first: `fit_to_data`); also returns the fit statistics of the first
    fit: counts and seconds per stage, ``fit_seconds`` (wall) and ``fit_cpu_seconds`` (this
    process's CPU time, all its threads; worker processes not counted), and ``path``, the
    cached model file."""
    ids = sorted(s.id for s in train)
    roi = isinstance(getattr(config, "train", None), RoITrainConfig)
    if roi:  # what the config leaves to the data (image size, length, a dense detector's own choices) is in the key
        config = getattr(detector_class(config.detector), "fit_config", fit_to_data)(config, train)
    fitted = {k: v for k, v in to_dict(config).items() if k not in config.TEST_TIME}
    if roi:  # augmentation off: the key it had before
        fitted["train"] = train_settings(config.train)
    key = params_key({"config": fitted, "ids": ids, "n": len(train), "rcnn": __version__}, 16)
    folder = Path(config.cache_dir) / "models"
    path, info_path = folder / f"{key}.pt", folder / f"{key}.json"
    if path.is_file() and info_path.is_file():
        model = load_model(path)  # fitted with `config` but for its test-time settings, which it takes now
        model.use_config(replace(model.config, **{k: getattr(config, k) for k in config.TEST_TIME}))
        return model, {**json.loads(info_path.read_text()), "from_cache": True, "path": str(path)}
    start, cpu = time.perf_counter(), time.process_time()
    model = build_detector(config).fit(train)
    info = {
        **model.fit_stats_,
        "fit_seconds": time.perf_counter() - start,
        "fit_cpu_seconds": time.process_time() - cpu,
    }
    model.save(path)
    write_text(info_path, json.dumps(info, indent=1) + "\n")
    return model, {**info, "from_cache": False, "path": str(path)}


def learned_proposals(params: dict, name: str, train: Dataset) -> dict:
    """`params` of a learned proposer's method (``method = "rpn"``, with ``train_config``
    and ``fit_cache``) as a proposer's settings: ``model`` the Faster R-CNN fitted on `train`
    (dataset `name`) with the config ``train_config[name]`` (else ``train_config["default"]``,
    a file in experiments/configs), from (or into) the model cache under ``fit_cache/name``
    (`fit_or_load`; the family experiment's cache, so its models are reused)."""
    params = dict(params)
    configs, cache = params.pop("train_config"), params.pop("fit_cache")
    config = load_config(CONFIGS / configs.get(name, configs["default"]), {"cache_dir": f"{cache}/{name}"})
    _, fit = fit_or_load(config, train)
    return {**params, "model": fit["path"]}


class TestSet:
    """A fitted detector's proposals and features on a test split, cached on disk, scored
    under any test-time setting: the first `boxes` proposals, an NMS threshold, a score cut."""

    def __init__(self, model: RCNN, test: Dataset, proposals: dict | None = None):
        c = model.config
        self.model, self.test = model, test
        self.params = dict(proposals or c.proposals)
        self.regions = replace_proposals(model, self.params).dataset_features(test)
        # read once: each scoring reuses the boxes and the recorded seconds (an entry's features are MBs)
        self.boxes = {s.id: self.regions.boxes(s) for s in test}
        self.seconds = {s.id: self.regions.seconds(s) for s in test}

    def score(
        self,
        boxes: int | None = None,
        nms_threshold: float | None = None,
        score_threshold: float | None = None,
        test_rule: str | None = None,
    ) -> tuple[dict, dict]:
        """``(metrics, detections)``: VOC mAP@0.5 (all-point and VOC07), COCO AP, AP50 and
        AP75, proposal recall of the boxes used, and seconds per image split into proposals
        (Selective Search's time does not depend on `boxes`), features (the cached extraction's
        time scaled to the boxes used) and heads + NMS (measured here). `test_rule` (None: the
        config's, or ``threshold`` when a `score_threshold` is given) as in `CommonConfig`."""
        if test_rule is None and score_threshold is not None:
            test_rule = "threshold"
        changes = {
            k: v
            for k, v in (
                ("nms_threshold", nms_threshold),
                ("score_threshold", score_threshold),
                ("test_rule", test_rule),
            )
            if v is not None
        }
        model = copy.copy(self.model)  # the same fitted heads; the config of this call
        model.config = replace(self.model.config, proposals=self.params, **changes)
        timings, secs = {}, {"proposals": [], "features": []}
        detections = model.detect_dataset(self.test, timings=timings, max_boxes=boxes)
        for s in self.test:
            n = len(self.boxes[s.id][:boxes])
            p, f = self.seconds[s.id]
            secs["proposals"].append(p)
            secs["features"].append(None if f is None else f * n / max(len(self.boxes[s.id]), 1))
        voc = evaluate_voc(self.test, detections, 0.5)
        voc07 = evaluate_voc(self.test, detections, 0.5, use_07_metric=True)
        coco = evaluate_coco(self.test, detections)
        k = boxes or max(len(b) for b in self.boxes.values())
        recall = proposal_recall(self.test, self.boxes, [k])["overall"][0]
        per_image = {name: _mean(v) for name, v in secs.items()}
        per_image["heads_nms"] = sum(timings.values()) / max(len(self.test), 1)
        total = None if None in per_image.values() else sum(per_image.values())
        ends = [(r[-1], p[-1]) for r, p, n in zip(voc.recall, voc.precision, voc.npos) if n > 0 and len(r)]
        metrics = {
            "mAP50": voc.mAP,
            "test_rule": model.config.test_rule,
            "detections_per_image": sum(len(d) for d in detections.values()) / max(len(self.test), 1),
            "pr_end_recall": _mean([r for r, _ in ends]),  # where the precision-recall curves stop
            "pr_end_precision": _mean([p for _, p in ends]),
            "mAP50_voc07": voc07.mAP,
            "coco_AP": coco["AP"],
            "coco_AP50": coco["AP50"],
            "coco_AP75": coco["AP75"],
            "per_class_AP50": voc.to_dict()["per_class"],
            "boxes_per_image": recall["boxes_per_image"],
            "recall@0.5": recall["recall@0.5"],
            "recall@0.7": recall["recall@0.7"],
            "AR": recall["ar"],
            "seconds_per_image": total,
            "seconds_split": per_image,
        }
        return metrics, detections


def replace_proposals(model: RCNN, params: dict) -> RCNN:
    """A shallow copy of a fitted `model` whose config proposes with `params`."""
    if params == dict(model.config.proposals):
        return model
    other = copy.copy(model)
    other.config = replace(model.config, proposals=params)
    return other


def _mean(values) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


# -- report -----------------------------------------------------------------------------------


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(rows: list[dict], columns: list[tuple], digits: int = 3) -> list[str]:
    """Markdown table lines of `rows` with `columns` ``[(key, header)]`` or ``[(key, header,
    digits)]`` (floats get `digits` decimals unless the column says otherwise)."""
    columns = [(c[0], c[1], c[2] if len(c) > 2 else digits) for c in columns]
    lines = [
        "| " + " | ".join(c[1] for c in columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
    ]
    lines += ["| " + " | ".join(fmt(r.get(k), d) for k, _, d in columns) + " |" for r in rows]
    return lines + [""]


def line_plot(
    path: Path, panels: dict[str, dict[str, tuple[list, list]]], xlabel: str, ylabel: str, logx: bool = False
) -> Path:
    """One panel per key of `panels` (``{panel: {series label: (xs, ys)}}``), lines with markers."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (title, series) in zip(axes, panels.items()):
        for label, (xs, ys) in series.items():
            ax.plot(xs, [np.nan if y is None else y for y in ys], marker="o", label=label)
        if logx:
            ax.set_xscale("log")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)
    return path


def bar_plot(path: Path, panels: dict[str, dict[str, float]], ylabel: str) -> Path:
    """One panel per key of `panels` (``{panel: {bar label: value}}``), horizontal bars."""
    from matplotlib.figure import Figure

    n = max(len(bars) for bars in panels.values())
    fig = Figure(figsize=(5.2 * len(panels), 0.8 + 0.42 * n), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (title, bars) in zip(axes, panels.items()):
        labels = list(bars)[::-1]
        values = [np.nan if bars[k] is None else bars[k] for k in labels]
        ax.barh(labels, values, color="#4c72b0")
        for y, v in enumerate(values):
            if not np.isnan(v):
                ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
        # Room right of a bar at 1.0 for its label, inside the frame; ticks stop at 1.
        ax.set(title=title, xlabel=ylabel, xlim=(0, 1.2), xticks=np.linspace(0, 1, 5))
        ax.tick_params(axis="y", labelsize=8)
    save_figure(fig, path, dpi=110)
    return path


class Report:
    """Collects an experiment's markdown and results; `write` adds the run record (config
    file, git commit, package versions, machine, run time) and writes both files."""

    def __init__(self, args, title: str, intro: str):
        self.args, self.title, self.intro = args, title, intro
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.results: dict = {}
        self.start = time.perf_counter()

    def write(self) -> Path:
        from rcnn.reports.report import json_safe

        meta = run_record()
        meta["seconds"] = time.perf_counter() - self.start
        meta["config_file"] = os.path.relpath(self.args.config, ROOT)
        config_text = Path(self.args.config).read_text()
        lines = [
            f"# {self.title}",
            "",
            self.intro.strip(),
            "",
            *self.lines,
            "## Run",
            "",
            f"- command: `make experiment-{self.args.name}` (`{' '.join(sys.argv)}`)",
            f"- run time: {meta['seconds']:.0f} s, with the caches as they were at the start",
            f"- git commit: {meta['git_commit'] or 'unknown'}",
            "- packages: " + ", ".join(f"{k} {v}" for k, v in meta["packages"].items() if v),
            f"- machine: {meta['platform']}, Python {meta['python']}, {meta['cpu_count']} CPUs",
            "",
            f"Config ({meta['config_file']}):",
            "",
            "```toml",
            config_text.strip(),
            "```",
            "",
        ]
        write_text(self.out / "results.json", json.dumps(json_safe({**self.results, "meta": meta}), indent=1) + "\n")
        write_text(self.out / "report.md", "\n".join(lines))
        print(f"wrote {self.out / 'report.md'} ({meta['seconds']:.0f} s)")
        return self.out / "report.md"


def base_summary(target: Target) -> str:
    """One line naming a target's data and base config."""
    return (
        f"**{target.name}**: train {len(target.train)} images, test {len(target.test)} images, "
        f"{len(target.train.classes)} classes; base detector config `{os.path.relpath(target.base, ROOT)}`."
    )


def script_main(name: str, doc: str | None, run, argv=None, extra=None) -> int:
    """The entry point of an experiment with a script of its own: parse the arguments, make
    the paths given from the caller's folder absolute, line-buffer stdout (progress reaches a
    log as it comes), then `run(args)` from the repository root."""
    args = parse_args(name, doc, argv, extra)
    for option in ("config", "out", "data", "base_config"):
        if getattr(args, option):
            setattr(args, option, os.path.abspath(getattr(args, option)))
    sys.stdout.reconfigure(line_buffering=True)
    chdir_root()
    run(args)
    return 0


def chdir_root() -> None:
    """Experiments run from the repository root: the configs' cache_dir is relative to it."""
    os.chdir(ROOT)
