"""The family on one backbone: R-CNN, Fast R-CNN and Faster R-CNN trained and tested on the same
data (synthetic, cards) with the same proposals and evaluation: VOC mAP@0.5, COCO AP, training
seconds (wall and CPU), test seconds per image split into proposals and network, the boxes each
arm scores per image (``boxes_scored``: every step's, e.g. Faster R-CNN's anchors and proposals,
from the detectors' traces over the timed images; ``boxes_scored_steps`` step by step), and a
plot of mAP against test seconds per image (log x), one point per arm.

Config ``experiments/configs/family.toml``: ``[experiment]`` ``timed_images`` (test images
timed per arm), ``cache`` (one cache folder per dataset below it), ``bases.DATASET.KIND``
(the base config file of each detector kind per dataset), optional ``notes`` (the report's
closing paragraph) and ``papers = false`` (no table of the papers' figures); ``[[arms]]``: ``name``,
``detector`` (kind), ``overrides`` (merged into the base), optional ``test`` (settings changed
on the fitted model at test time, e.g. ``svd_rank``) and ``shares`` (an earlier arm whose
trained network and features this one reuses: their time is counted in this arm's training
too). Arms whose detector kind or base config is missing are left out with a line saying so.

    .venv/bin/python experiments/family.py [--only synthetic,cards]     # make experiment-family
    .venv/bin/python experiments/family.py --arm YOLO --arm SSD  # these arms again, the others' rows kept

With ``--arm`` only the arms named run; every other arm's row, fit and config come from the
results.json already there (each row says the commit it was measured at), so one arm can be
measured again without the hours the whole family takes on a CPU.
    .venv/bin/python experiments/family.py --replot     # family.png again from results.json

Other experiments in the same form run with ``--config FILE --out FOLDER`` (``make
experiment-augmentation``: experiments/configs/augmentation.toml).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import CONFIGS, Report, base_summary, fit_or_load, table, targets  # noqa: E402

from rcnn.config import load_toml, to_dict  # noqa: E402
from rcnn.datasets.images import read_image  # noqa: E402
from rcnn.detectors import DETECTORS, load_config  # noqa: E402
from rcnn.evaluation import evaluate_coco, evaluate_voc  # noqa: E402
from rcnn.evaluation.coco import has_masks  # noqa: E402
from rcnn.proposals import make_proposer  # noqa: E402
from rcnn.reports.report import save_figure  # noqa: E402

COLUMNS = [
    ("arm", "arm"),
    ("mAP50", "VOC mAP@0.5"),
    ("coco_AP", "COCO AP"),
    ("mask_AP", "mask AP"),
    ("boxes_scored", "boxes scored/img", 0),
    ("train_seconds", "train s", 0),
    ("train_cpu_seconds", "train CPU s", 0),
    ("proposals_seconds", "test s/img: proposals", 3),
    ("network_seconds", "network", 3),
    ("total_seconds", "total", 3),
]
# A sharing arm reuses these stages of the arm it shares with (R-CNN: fine-tuning, features).
SHARED_STAGES = ("finetune_seconds", "features_seconds")

PAPERS = """\
For orientation, the papers' figures on PASCAL VOC 2007 test (VGG16, one NVIDIA K40 GPU, proposals
on a CPU; not comparable in scale with the rows above, only in their ratios):

| detector | VOC07 mAP | training | test s/img | source |
| --- | --- | --- | --- | --- |
| R-CNN, SVMs + box regression | 66.0 | 84 h | 47.0 (+ proposals) | Fast R-CNN paper, Table 4 |
| R-CNN, the fine-tuned softmax instead of SVMs (AlexNet, no box regression) | 50.9 (SVMs: 54.2) | | | R-CNN paper, appendix B |
| Fast R-CNN | 66.9 | 9.5 h | 0.32 (+ proposals) | Fast R-CNN paper, Table 4 |
| Fast R-CNN with truncated SVD | 66.6 | | 0.22 (+ proposals) | Fast R-CNN paper, Table 4 |
| Fast R-CNN with SVMs instead of softmax | 66.8 | | | Fast R-CNN paper, Table 8 |
| Selective Search + Fast R-CNN, proposals included | 66.9 | | 1.83 (1.51 of it proposals) | Faster R-CNN paper, Tables 2 and 5 |
| Faster R-CNN (RPN, 300 proposals) | 69.9 | | 0.198, proposals included | Faster R-CNN paper, Tables 3 and 5 |
"""


NOTES = (
    "Training seconds exclude the proposals of the training set (computed once per dataset, "
    "shared by the Selective Search arms). The softmax arm reuses the SVM arm's fine-tuned network "
    "and features: their wall time is counted in both rows, and its CPU column is left empty. "
    "The SVD arm is the RoI align arm's trained network with its fully connected layers truncated "
    "at test time: no training of its own."
)


def shown(path: Path) -> str:
    """`path` relative to the repository root when it is inside it."""
    return os.path.relpath(path, harness.ROOT) if path.is_relative_to(harness.ROOT) else str(path)


def timed_samples(test, n: int):
    return test.samples[: max(1, min(n, len(test.samples)))]


def proposal_seconds(config, samples) -> float:
    """Seconds per image the configured proposer takes on `samples` (one process)."""
    proposer = make_proposer(config.proposals)
    start = time.perf_counter()
    for s in samples:
        proposer(read_image(s.image_path))
    return (time.perf_counter() - start) / len(samples)


def network_seconds(model, samples) -> tuple[float, dict[str, float]]:
    """Seconds per image of `detect` after the proposals (read from the cache), over
    `samples`, after one warm-up image, timed through its `trace` (whose last stage `detect`
    returns); and the boxes it scored per image, each step's mean over `samples`
    (`Trace.scored`: e.g. Faster R-CNN's ``anchors`` and ``proposals``, YOLO's ``grid boxes``)."""
    store = None if model.learns_proposals else model.proposal_store()
    images = [read_image(s.image_path) for s in samples]
    boxes = [None if store is None else store.load(s) for s in samples]
    model.detect(images[0], proposals=boxes[0])
    counts = []
    start = time.perf_counter()
    for image, b in zip(images, boxes):
        counts.append(model.trace(image, proposals=b).scored)
    seconds = (time.perf_counter() - start) / len(images)
    steps = dict.fromkeys(k for c in counts for k in c)
    return seconds, {k: sum(c.get(k, 0) for c in counts) / len(counts) for k in steps}


def train_seconds(fit: dict, shared: dict | None) -> tuple[float, float | None]:
    """Training wall seconds without the proposals, and CPU seconds (None for a sharing arm:
    the shared stages' CPU time was spent in the other arm's fit). A sharing arm counts the
    shared stages at the other arm's cost instead of its own (a cache read)."""
    wall = fit["fit_seconds"] - fit.get("proposals_seconds", 0.0)
    if shared is None:
        return wall, fit.get("fit_cpu_seconds")
    for stage in SHARED_STAGES:
        wall += shared.get(stage, 0.0) - fit.get(stage, 0.0)
    return wall, None


def plot(path: Path, panels: dict[str, list[dict]]) -> None:
    """One panel per dataset: VOC mAP@0.5 against total test seconds per image (log x)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    markers = {
        "rcnn": "s",
        "fast_rcnn": "o",
        "faster_rcnn": "^",
        "mask_rcnn": "X",
        "yolo": "D",
        "ssd": "v",
        "centernet": "P",
    }
    for ax, (name, rows) in zip(axes, panels.items()):
        for r in rows:
            ax.plot(r["total_seconds"], r["mAP50"], markers.get(r["detector"], "x"), markersize=8, label=r["arm"])
        ax.set_xscale("log")
        # Labels at 1, 2 and 5 of each decade only: every minor tick labelled (0.05 ... 0.09) overlaps.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        lo = min(r["mAP50"] for r in rows)
        ax.set(
            title=name,
            xlabel="test seconds per image, proposals included (log)",
            ylabel="VOC mAP@0.5",
            ylim=(max(0.0, lo - 0.1), 1.0),
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
    save_figure(fig, path, dpi=110)


def earlier_results(args, arms: list[dict]) -> dict:
    """``{dataset: results}`` of the results.json in ``args.out`` when ``--arm`` names the
    arms to run again (the others are kept from it), else empty; an unknown arm name is an error."""
    if not args.arms:
        return {}
    if args.only:
        raise SystemExit("--arm runs on every dataset (the kept rows of the others would be lost): leave out --only")
    names = {a["name"] for a in arms}
    unknown = set(args.arms) - names
    if unknown:
        raise SystemExit(
            f"--arm: no arm {', '.join(sorted(unknown))} in {args.config} (arms: {'; '.join(a['name'] for a in arms)})"
        )
    path = Path(args.out) / "results.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "meta"} if path.is_file() else {}


def run(args) -> None:
    spec = load_toml(args.config)
    exp, arms = spec["experiment"], spec["arms"]
    report = Report(args, exp["title"], exp.get("intro", ""))
    before = earlier_results(args, arms)
    commit = harness.run_record()["git_commit"]
    panels, results = {}, {}
    for target in targets(args):
        print(f"== family on {target.name}")
        bases = exp["bases"].get(target.name, {})
        cache = f"{exp['cache']}/{target.name}"
        samples = timed_samples(target.test, int(exp["timed_images"]))
        rows, fits, configs, skipped, ss_seconds = [], {}, {}, [], {}
        kept = before.get(target.name, {})
        for arm in arms:
            if args.arms and arm["name"] not in args.arms:
                row = next((r for r in kept.get("rows", []) if r["arm"] == arm["name"]), None)
                if row is not None:
                    rows.append({"commit": kept.get("commit"), **row})
                    fits[arm["name"]] = kept["fits"].get(arm["name"])
                    configs[arm["name"]] = kept["configs"].get(arm["name"])
                    print(f"-- {arm['name']}: kept from {Path(args.out) / 'results.json'}")
                continue
            base = CONFIGS / bases.get(arm["detector"], "-")  # an absolute path stays as it is
            if arm["detector"] not in DETECTORS or not base.is_file():
                skipped.append(arm["name"])
                print(f"-- {arm['name']}: left out (no detector {arm['detector']!r} or no base config {base.name})")
                continue
            print(f"-- {arm['name']}")
            config = load_config(base, [arm.get("overrides"), arm.get("test"), {"cache_dir": cache}])
            not_test = set(arm.get("test", {})) - set(config.TEST_TIME)
            if not_test:
                raise SystemExit(
                    f"{args.config}: arm {arm['name']!r}: test = {{{', '.join(not_test)}}}: not test-time settings"
                )
            model, fit = fit_or_load(config, target.train)  # an arm differing only in `test` shares the model
            fits[arm["name"]] = fit
            configs[arm["name"]] = to_dict(model.config)
            detections = model.detect_dataset(target.test)
            coco = evaluate_coco(target.test, detections)
            segm = evaluate_coco(target.test, detections, "segm") if has_masks(target.test, detections) else None
            wall, cpu = train_seconds(fit, fits.get(arm.get("shares")))
            if model.learns_proposals:
                proposals = 0.0
            else:
                key = repr(to_dict(config)["proposals"])
                if key not in ss_seconds:
                    ss_seconds[key] = proposal_seconds(config, samples)
                proposals = ss_seconds[key]
            network, scored = network_seconds(model, samples)
            row = {
                "arm": arm["name"],
                "detector": arm["detector"],
                "mAP50": evaluate_voc(target.test, detections, 0.5).mAP,
                "coco_AP": coco["AP"],
                "mask_AP": None if segm is None else segm["AP"],
                "train_seconds": wall,
                "train_cpu_seconds": cpu,
                "proposals_seconds": proposals,
                "network_seconds": network,
                "total_seconds": proposals + network,
                "boxes_scored": sum(scored.values()),
                "boxes_scored_steps": scored,
                "fit_from_cache": fit["from_cache"],
                "commit": commit,
            }
            rows.append(row)
            print(
                f"   mAP {row['mAP50']:.3f}  COCO AP {row['coco_AP']:.3f}  train {wall:.0f} s  "
                f"test {proposals:.3f} + {network:.3f} s/img"
            )
        if not rows:
            continue
        panels[target.name] = rows
        results[target.name] = {"rows": rows, "configs": configs, "fits": fits, "left_out": skipped}
        fastest = min(r["total_seconds"] for r in rows)
        report.lines += [
            f"## {target.name}",
            "",
            base_summary(target).split("; base detector config")[0]
            + "; base configs: "
            + ", ".join(f"`{kind}`: `{shown(CONFIGS / name)}`" for kind, name in bases.items())
            + ".",
            "",
            *table(rows, COLUMNS),
            f"Test seconds over the first {len(samples)} test images, one process on this machine's "
            f"{os.cpu_count()} CPUs; the fastest arm takes {fastest:.3f} s per image. Boxes scored per image: "
            "every box a step of the detector scores, over the same images, as its trace counts them "
            "(the proposals R-CNN and Fast R-CNN score; Faster and Mask R-CNN's anchors and then proposals; "
            "YOLO's grid boxes, SSD's default boxes, CenterNet's heatmap cells x classes; step by step in "
            "results.json).",
            "",
        ]
        commits = sorted({str(r.get("commit")) for r in rows})
        if len(commits) > 1:
            report.lines += [
                f"Rows measured at {len(commits)} commits ({', '.join(commits)}): each row's is in results.json.",
                "",
            ]
        if skipped:
            report.lines += ["Left out (no such detector yet, or no base config): " + ", ".join(skipped) + ".", ""]
    if panels:
        plot(report.out / "family.png", panels)
        report.lines += ["![VOC mAP@0.5 against test seconds per image, one point per arm](family.png)", ""]
    report.lines += [exp.get("notes", NOTES), ""] + [PAPERS] * exp.get("papers", True)
    report.results = results
    report.write()


def replot(results: Path = harness.ROOT / "experiments/results/family/results.json") -> None:
    """Draw family.png again beside `results` from its rows, without training or timing anything."""
    data = json.loads(Path(results).read_text())
    plot(Path(results).parent / "family.png", {name: v["rows"] for name, v in data.items() if "rows" in v})


def main(argv=None) -> int:
    if (argv if argv is not None else sys.argv[1:]) == ["--replot"]:
        replot()
        return 0

    def arms_option(parser):
        parser.add_argument(
            "--arm",
            dest="arms",
            action="append",
            help="an arm to run again (repeatable); the other arms' rows are kept from results.json",
        )

    return harness.script_main("family", __doc__, run, argv, arms_option)


if __name__ == "__main__":
    sys.exit(main())
