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
    # --classes is the model's list: ground truth of another class is an error, one line.
    code, _, err = _run(["--gt", gt, "--detections", dets, "--classes", "c1,c2,c4"], capsys)
    assert code == 1 and "unknown class 'c3'" in err and len(err.splitlines()) == 1


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
