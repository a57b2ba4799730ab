"""COCO mask AP/AR (``segm``) against pycocotools' ``COCOeval(iouType="segm")``, exactly."""

import json

import cv2
import numpy as np
import pytest
from test_coco import run_cocoeval  # pycocotools, the oracle

from rcnn.datasets import Dataset, Detections, Sample, read_coco, read_detections, write_coco, write_detections
from rcnn.datasets.masks import encode, mask_boxes, rle_json
from rcnn.errors import DatasetError
from rcnn.evaluation.coco import STAT_NAMES, coco_accumulate, evaluate_coco


def _blob(rng, h, w, size):
    """A random filled ellipse (sometimes with a hole) of about `size` px across."""
    m = np.zeros((h, w), np.uint8)
    centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    axes = (max(1, int(size * rng.uniform(0.3, 0.6))), max(1, int(size * rng.uniform(0.3, 0.6))))
    cv2.ellipse(m, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    if rng.random() < 0.2:
        cv2.circle(m, centre, max(1, axes[0] // 3), 0, -1)
    if not m.any():
        m[min(centre[1], h - 1), min(centre[0], w - 1)] = 1
    return m


def _shifted(rng, m):
    dy, dx = rng.integers(-3, 4, 2)
    out = np.roll(m, (int(dy), int(dx)), (0, 1))
    return out if out.any() else m


def random_segm_case(seed, n_images=25, n_classes=3):
    """Random masks: empty images, crowd regions, a class with no ground truth, tied scores,
    images with > 100 detections or with detections but no objects; all three area ranges."""
    rng = np.random.default_rng(seed)
    h, w = 160, 200
    samples, dets = [], {}
    for i in range(n_images):
        n = int(rng.choice([0, 1, 3, 7]))
        gt = [_blob(rng, h, w, rng.choice([12, 50, 140])) for _ in range(n)]
        masks = [encode(m) for m in gt]
        labels = rng.integers(1, n_classes, n)  # the last class never has ground truth
        crowd = rng.random(n) < 0.15
        area = np.array([m.sum() for m in gt], np.float64) * np.where(rng.random(n) < 0.2, 1.3, 1.0)
        samples.append(
            Sample(str(i + 1), f"{i + 1}.png", w, h, mask_boxes(masks), labels, None, crowd, area, masks=masks)
        )
        k = int(rng.choice([0, 2, 9, 120]))
        found = []
        for _ in range(k):
            if n and rng.random() < 0.7:
                j = int(rng.integers(n))
                found.append((_shifted(rng, gt[j]) if rng.random() < 0.8 else gt[j], labels[j]))
            else:
                found.append((_blob(rng, h, w, rng.choice([12, 50, 140])), int(rng.integers(1, n_classes + 1))))
        if k:
            d_masks = [encode(m) for m, _ in found]
            dets[str(i + 1)] = Detections(
                mask_boxes(d_masks), np.round(rng.random(k), 1), [c for _, c in found], masks=d_masks
            )
    return Dataset([f"c{c}" for c in range(1, n_classes + 1)], samples), dets


def pycocotools_segm(dataset, detections):
    """pycocotools' segm evaluation of the same masks (image id = sample id, category = label)."""
    images = [{"id": int(s.id), "width": s.width, "height": s.height, "file_name": "x"} for s in dataset]
    anns = [
        dict(
            id=len(images) * 1000 + k * 100 + j,
            image_id=int(s.id),
            category_id=int(lab),
            segmentation=rle_json(m),
            area=float(a),
            iscrowd=int(c),
            bbox=[0, 0, 1, 1],
        )
        for k, s in enumerate(dataset)
        for j, (lab, c, a, m) in enumerate(zip(s.labels, s.iscrowd, s.area, s.masks))
    ]
    results = [
        {"image_id": int(key), "category_id": int(lab), "segmentation": rle_json(m), "score": float(sc)}
        for key, d in detections.items()
        for sc, lab, m in zip(d.scores, d.labels, d.masks)
    ]
    return run_cocoeval(images, anns, dataset.classes, results, "segm")


@pytest.mark.parametrize("seed", range(4))
def test_random_segm_cases_equal_pycocotools_exactly(seed):
    dataset, detections = random_segm_case(seed)
    assert any(len(d) > 100 for d in detections.values())
    assert any(len(s.labels) == 0 for s in dataset) and any(s.iscrowd.any() for s in dataset)
    E = pycocotools_segm(dataset, detections)
    ours = evaluate_coco(dataset, detections, "segm")
    assert [ours[name] for name in STAT_NAMES] == list(E.stats)  # difference 0.0 in float64
    precision, recall = coco_accumulate(dataset, detections, "segm")
    assert np.array_equal(precision, E.eval["precision"]) and np.array_equal(recall, E.eval["recall"])
    assert ours["per_class"]["c3"] == -1 and ours["AP"] > 0.05
    assert -1 not in (ours["APsmall"], ours["APmedium"], ours["APlarge"])


def test_segm_differs_from_bbox_on_the_same_detections():
    """A hollow mask fits its box but not the solid object: box AP 1, mask AP lower."""
    solid = np.zeros((100, 100), np.uint8)
    solid[20:80, 20:80] = 1
    hollow = solid.copy()
    hollow[30:70, 30:70] = 0
    gt = Sample("1", "1.png", 100, 100, [[20, 20, 80, 80]], [1], masks=[encode(solid)])
    d = Detections([[20, 20, 80, 80]], [0.9], [1], masks=[encode(hollow)])
    dataset = Dataset(["a"], [gt])
    assert evaluate_coco(dataset, {"1": d})["AP"] == pytest.approx(1.0)
    segm = evaluate_coco(dataset, {"1": d}, "segm")
    # mask IoU (3600 - 1600) / 3600 = 0.556: a match at IoU .50 and .55 only, 2 of the 10 thresholds
    assert segm["AP50"] == pytest.approx(1.0) and segm["AP75"] == 0 and segm["AP"] == pytest.approx(0.2)
    assert [segm[name] for name in STAT_NAMES] == list(pycocotools_segm(dataset, {"1": d}).stats)


def test_missing_masks_are_named():
    dataset, detections = random_segm_case(0, n_images=4)
    bare = {k: Detections(d.boxes, d.scores, d.labels) for k, d in detections.items()}
    with pytest.raises(DatasetError, match="no 'segmentation'"):
        evaluate_coco(dataset, bare, "segm")
    boxes_only = Dataset(["a"], [Sample("1", "1.png", 10, 10, [[0, 0, 5, 5]], [1])])
    with pytest.raises(DatasetError, match="1.png: object 1 has no mask"):
        evaluate_coco(boxes_only, {}, "segm")


def test_detections_json_carries_rle_and_cli_scores_segm(tmp_path):
    from rcnn.cli import main

    dataset, detections = random_segm_case(5, n_images=8)
    dataset.category_ids = [1, 2, 3]
    write_coco(dataset, tmp_path / "gt.json")
    write_detections(tmp_path / "dets.json", detections, dataset)
    record = json.loads((tmp_path / "dets.json").read_text())[0]
    assert isinstance(record["segmentation"]["counts"], str)
    back = read_detections(tmp_path / "dets.json", read_coco(tmp_path / "gt.json"))
    for key, d in detections.items():
        assert [m["counts"] for m in back[key].masks] == [m["counts"] for m in d.masks]
    out = tmp_path / "report.json"
    argv = ["--quiet", "evaluate", "--gt", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "dets.json")]
    assert main(argv + ["--metric", "segm", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    expected = list(pycocotools_segm(dataset, detections).stats)
    assert [report[name] for name in STAT_NAMES] == expected
