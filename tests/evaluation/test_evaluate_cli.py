"""`rcnn evaluate`: the model's classes (a class the ground truth lacks scores n/a, as
pycocotools and the devkit score a class without ground truth) and its argument checks."""

import contextlib
import io
import json

import numpy as np
import pytest
from test_coco import COCO, COCOeval, random_case

from rcnn.cli import main
from rcnn.datasets import Detections, load_dataset, write_coco, write_detections
from rcnn.evaluation import evaluate_voc
from rcnn.evaluation.coco import STAT_NAMES


def voc_folder(folder, dataset):
    """`dataset` as a folder of VOC .xml files (no images: evaluate reads annotations only)."""
    folder.mkdir()
    for s in dataset:
        objects = "".join(
            f"<object><name>{dataset.classes[lab - 1]}</name><difficult>{int(d)}</difficult><bndbox>"
            f"<xmin>{b[0] + 1:.9g}</xmin><ymin>{b[1] + 1:.9g}</ymin><xmax>{b[2]:.9g}</xmax><ymax>{b[3]:.9g}</ymax></bndbox></object>"
            for b, lab, d in zip(s.boxes, s.labels, s.difficult)
        )
        (folder / f"im{s.id}.xml").write_text(
            f"<annotation><filename>im{s.id}.jpg</filename><size><width>{s.width}</width><height>{s.height}</height></size>"
            f"{objects}</annotation>"
        )
    return folder


def records(detections, image_id, category_id):
    """Results records of ``{sample id: Detections}``; `image_id(sample id)`, `category_id(label)`."""
    return [
        {
            "image_id": image_id(k),
            "category_id": category_id(int(lab)),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(sc),
        }
        for k, d in detections.items()
        for b, sc, lab in zip(d.boxes, d.scores, d.labels)
    ]


@pytest.fixture
def case(tmp_path):
    """Ground truth of classes c1..c3 and detections of c1..c4: c4 ("star") is a class of the
    model that this test split lacks."""
    dataset, detections = random_case(5, n_images=15)  # c4 never has ground truth, but is detected
    assert any((d.labels == 4).any() for d in detections.values())
    for s in dataset:
        s.iscrowd[:] = False  # VOC has no crowd regions,
        s.difficult[:] = False  # and plain pycocotools no difficult flag
    gt_dataset = type(dataset)(["c1", "c2", "c3"], dataset.samples)
    return dataset, detections, gt_dataset


def _run(argv, capsys):
    capsys.readouterr()  # what earlier calls printed (progress lines) is not this command's output
    code = main(["--quiet", "evaluate", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_voc_ground_truth_lacking_a_detected_class(tmp_path, case, capsys):
    dataset, detections, gt_dataset = case
    gt = voc_folder(tmp_path / "gt", gt_dataset)
    for s in dataset:
        s.id = f"im{s.id}"
    detections = {f"im{k}": d for k, d in detections.items()}
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(records(detections, str, lambda label: f"c{label}")))
    read_back = load_dataset(gt, classes=["c1", "c2", "c3", "c4"], check_images=False)
    expected = evaluate_voc(read_back, detections).to_dict()
    assert expected["per_class"]["c4"] is None and expected["mAP"] is not None
    for extra in ([], ["--classes", "c1,c2,c3,c4"]):
        code, out, err = _run(["--gt", gt, "--detections", dets, "--out", tmp_path / "r.json", *extra], capsys)
        assert code == 0, err
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["per_class"] == pytest.approx(expected["per_class"]) and report["mAP"] == pytest.approx(
            expected["mAP"]
        )
        assert "c4           0     n/a" in out and "left out of the means" in out
        assert ("named only by the detections (no ground truth): c4" in out) == (not extra)
    # The mAP is the mean over the classes with ground truth: as if c4 had not been detected.
    without = {
        k: Detections(d.boxes[d.labels < 4], d.scores[d.labels < 4], d.labels[d.labels < 4])
        for k, d in detections.items()
    }
    assert expected["mAP"] == pytest.approx(evaluate_voc(load_dataset(gt, check_images=False), without).mAP)
    # --classes may be a subset: only those classes are scored; c3's objects and detections are left out.
    code, out, err = _run(
        ["--gt", gt, "--detections", dets, "--classes", "c1,c2,c4", "--out", tmp_path / "s.json"], capsys
    )
    assert code == 0, err
    c3_objects = sum(int((s.labels == 3).sum()) for s in gt_dataset)
    c3_dets = sum(int((d.labels == 3).sum()) for d in detections.values())
    assert c3_objects and c3_dets
    assert f"left out, of classes not in --classes: {c3_objects} objects, {c3_dets} detections" in out
    report = json.loads((tmp_path / "s.json").read_text())
    assert set(report["per_class"]) == {"c1", "c2", "c4"} and report["per_class"]["c4"] is None
    for c in ("c1", "c2"):
        assert report["per_class"][c] == pytest.approx(expected["per_class"][c])
    assert report["mAP"] == pytest.approx((expected["per_class"]["c1"] + expected["per_class"]["c2"]) / 2)


def test_detections_of_a_subset_of_the_images_get_a_warning(tmp_path, case, capsys):
    """Detections of the test split scored against a whole root: one line says so."""
    dataset, detections, _ = case
    dataset = dataset.subset([k for k, d in detections.items() if len(d)])  # every image has a detection
    dataset.category_ids = [1, 2, 3, 4]
    write_coco(dataset, tmp_path / "gt.json")
    write_detections(tmp_path / "all.json", detections, dataset)
    part = {s.id: detections[s.id] for s in dataset if int(s.id) % 3 == 0}
    write_detections(tmp_path / "part.json", part, dataset)
    code, out, _ = _run(["--gt", tmp_path / "gt.json", "--detections", tmp_path / "all.json"], capsys)
    assert code == 0 and "warning" not in out
    code, out, _ = _run(["--gt", tmp_path / "gt.json", "--detections", tmp_path / "part.json"], capsys)
    named = sum(len(d) > 0 for d in part.values())
    assert code == 0 and 0 < named < len(dataset)
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warning == [
        f"warning: the detections name {named} of the {len(dataset)} images; the other {len(dataset) - named} count"
        " as images where nothing was detected (to score one split of the ground truth, give --split)"
    ]


def _pycocotools(gt_path, dets_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        E = COCOeval(gt, gt.loadRes(str(dets_path)), "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E.stats


@pytest.mark.parametrize("listed", [False, True])
def test_coco_ground_truth_lacking_a_detected_category_equals_pycocotools(tmp_path, case, capsys, listed):
    """The file lacks category 4 (or lists it with no annotations): either way pycocotools
    scores the other categories alone, and so does `rcnn evaluate`."""
    dataset, detections, gt_dataset = case
    gt_dataset.category_ids = [1, 2, 3]
    if listed:
        gt_dataset = gt_dataset.with_classes(["c1", "c2", "c3", "c4"])
    write_coco(gt_dataset, tmp_path / "gt.json")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(records(detections, int, int)))
    code, out, err = _run(
        ["--gt", tmp_path / "gt.json", "--detections", dets, "--metric", "coco", "--out", tmp_path / "r.json"], capsys
    )
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    stats = _pycocotools(tmp_path / "gt.json", dets)
    for name, ref in zip(STAT_NAMES, stats):
        assert report[name] == pytest.approx(ref, abs=1e-6), name
    assert report["per_class"]["c4" if listed else "category 4"] == -1
    assert report["AP"] > 0
    # The VOC metrics on the same files: n/a for the class, left out of the mAP.
    code, out, err = _run(["--gt", tmp_path / "gt.json", "--detections", dets, "--out", tmp_path / "v.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["per_class"]["c4" if listed else "category 4"] is None
    assert report["mAP"] == pytest.approx(np.mean([report["per_class"][c] for c in ("c1", "c2", "c3")]))


@pytest.mark.parametrize("iou", ["1.5", "-1", "0", "nan", "inf"])
def test_iou_outside_0_1_is_a_one_line_error(tmp_path, case, capsys, iou):
    dataset, detections, _ = case
    dataset.category_ids = [1, 2, 3, 4]
    write_coco(dataset, tmp_path / "gt.json")
    write_detections(tmp_path / "dets.json", detections, dataset)
    argv = ["--gt", tmp_path / "gt.json", "--detections", tmp_path / "dets.json"]
    code, out, err = _run(argv + [f"--iou={iou}"], capsys)
    assert (
        code == 1
        and err.strip().endswith(f"--iou must be in (0, 1], not {float(iou):g}")
        and len(err.splitlines()) == 1
    )
    assert "mAP" not in out
    assert _run(argv + ["--iou", "1"], capsys)[0] == 0


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_score_beyond_float32_is_a_one_line_error(tmp_path, case, capsys):
    dataset, detections, _ = case
    dataset.category_ids = [1, 2, 3, 4]
    write_coco(dataset, tmp_path / "gt.json")
    (tmp_path / "dets.json").write_text(
        json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1e308}])
    )
    code, _, err = _run(["--gt", tmp_path / "gt.json", "--detections", tmp_path / "dets.json"], capsys)
    assert code == 1 and "record 0: 'score' 1e+308 is beyond float32's range" in err and len(err.splitlines()) == 1


def test_detections_of_one_split_of_a_voc_root_name_that_split(tmp_path, capsys):
    from rcnn.datasets.synthetic import make_synthetic

    root = tmp_path / "synth"
    make_synthetic(root, 10, 0, 96, 0.3)
    test = load_dataset(root, split="test", check_images=False)
    whole = load_dataset(root, check_images=False)
    perfect = {s.id: Detections(s.boxes, np.ones(len(s.boxes)), s.labels) for s in test}
    write_detections(tmp_path / "dets.json", perfect, test)
    code, out, _ = _run(["--gt", root, "--detections", tmp_path / "dets.json"], capsys)
    n = sum(len(s.boxes) > 0 for s in test)
    assert code == 0 and f"warning: the detections name {n} of the {len(whole)} images" in out
    assert "(give --split test)" in out
    code, out, _ = _run(["--gt", root, "--detections", tmp_path / "dets.json", "--split", "test"], capsys)
    assert code == 0 and "warning" not in out and "mAP" in out and "1.0000" in out


def test_skip_bad_leaves_out_a_malformed_annotation_and_its_detections(tmp_path, case, capsys):
    dataset, detections, gt_dataset = case
    gt = voc_folder(tmp_path / "gt", gt_dataset)
    detections = {f"im{k}": d for k, d in detections.items()}
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(records(detections, str, lambda label: f"c{label}")))
    bad = sorted(gt.glob("*.xml"))[0]
    bad.write_text("<annotation><size>")  # truncated XML
    code, out, err = _run(["--gt", gt, "--detections", dets], capsys)
    assert code == 1 and bad.name in err and len(err.strip().splitlines()) == 1
    code, out, err = _run(["--gt", gt, "--detections", dets, "--skip-bad", "--out", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert "skipped 1 bad sample(s):" in out and bad.name in out
    left = len(detections[bad.stem])
    assert f"note: {left} detection(s) of 1 skipped image(s) left out" in out
    bad.unlink()  # the same as evaluating without that sample at all
    rest = load_dataset(gt, classes=["c1", "c2", "c3", "c4"], check_images=False)
    expected = evaluate_voc(rest, {k: d for k, d in detections.items() if k != bad.stem}).to_dict()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mAP"] == pytest.approx(expected["mAP"])


def test_out_is_checked_before_the_work(tmp_path, case, capsys):
    dataset, detections, gt_dataset = case
    gt = voc_folder(tmp_path / "gt", gt_dataset)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(records({f"im{k}": d for k, d in detections.items()}, str, lambda lab: f"c{lab}")))
    (tmp_path / "folder").mkdir()
    code, out, err = _run(["--gt", gt, "--detections", dets, "--out", tmp_path / "folder"], capsys)
    assert code == 1 and "folder" in err and "mAP" not in out
