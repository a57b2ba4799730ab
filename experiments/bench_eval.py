"""Time `rcnn.evaluation.evaluate_coco` against pycocotools on the same synthetic input.

5,000 images x 100 detections x 20 classes by default (seeded): objects of every size, 2 %
crowd regions, half the detections near an object, scores on a 0.001 grid (ties). Times
pycocotools' evaluate + accumulate + summarize and our whole `evaluate_coco` in this same
run, checks the twelve numbers agree to 1e-6, prints both times and the ratio.

With ``--iou-type segm`` every object and detection also has a mask (the ellipse inscribed in
its box, as COCO RLE; images 1/4 the side, 260 px, to keep the masks' making short), and the
masks are scored (``COCOeval(iouType="segm")``); the numbers must then be equal exactly.

    .venv/bin/python experiments/bench_eval.py [--images 5000] [--dets 100] [--classes 20] [--seed 0]
    .venv/bin/python experiments/bench_eval.py --iou-type segm --images 2000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn.datasets import Dataset, Detections, Sample
from rcnn.datasets.masks import rle_json
from rcnn.evaluation.coco import STAT_NAMES, evaluate_coco


def ellipses(boxes: np.ndarray, size: int) -> list:
    """The RLE of the ellipse inscribed in each box ``[N, 4]`` of a ``size x size`` image."""
    import cv2
    from pycocotools import mask as mask_utils

    out = np.zeros((len(boxes), size, size), np.uint8)
    for m, (x1, y1, x2, y2) in zip(out, boxes.astype(np.float64)):
        centre = (round((x1 + x2) / 2 * 16), round((y1 + y2) / 2 * 16))
        axes = (max(round((x2 - x1) / 2 * 16), 8), max(round((y2 - y1) / 2 * 16), 8))
        cv2.ellipse(m, centre, axes, 0, 0, 360, 1, -1, shift=4)
        if not m.any():
            xi, yi = min(int(x1), size - 1), min(int(y1), size - 1)
            m[yi, xi] = 1
    return mask_utils.encode(np.asfortranarray(out.transpose(1, 2, 0))) if len(boxes) else []


def synthetic(n_images: int, n_dets: int, n_classes: int, seed: int, masks: bool = False):
    """A `Dataset` and ``{sample id: Detections}``; sample ids are "1".."N" (= COCO image ids).
    `masks`: every object and detection with a mask, coordinates / 4 (260 px images)."""
    rng = np.random.default_rng(seed)
    samples, detections = [], {}
    for i in range(n_images):
        n = int(rng.integers(0, 16))
        size = np.exp(rng.uniform(np.log(8), np.log(400), (n, 1))) * rng.uniform(0.6, 1.6, (n, 2))
        xy = rng.uniform(0, 640, (n, 2))
        boxes = np.concatenate([xy, xy + size], 1).astype(np.float32)
        labels = rng.integers(1, n_classes + 1, n)
        crowd = rng.random(n) < 0.02
        if masks:
            small = np.minimum(boxes / 4, 259).astype(np.float32)
            rles = ellipses(small, 260)
            samples.append(Sample(str(i + 1), f"{i + 1}.jpg", 260, 260, small, labels, iscrowd=crowd, masks=rles))
        else:
            samples.append(Sample(str(i + 1), f"{i + 1}.jpg", 1040, 1040, boxes, labels, iscrowd=crowd))
        near = rng.random(n_dets) < 0.5 if n else np.zeros(n_dets, bool)
        src = rng.integers(0, max(n, 1), n_dets)
        d = rng.uniform(0, 640, (n_dets, 4))
        d[:, 2:] = d[:, :2] + np.exp(rng.uniform(np.log(8), np.log(400), (n_dets, 2)))
        if n:
            w = (boxes[src, 2:] - boxes[src, :2]).repeat(2, 1)
            d[near] = boxes[src[near]] + rng.normal(0, 0.1, (near.sum(), 4)) * w[near]
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        lab = np.where(
            near & (rng.random(n_dets) < 0.8), labels[src] if n else 1, rng.integers(1, n_classes + 1, n_dets)
        )
        if masks:
            d = np.minimum(d / 4, 259)
            detections[str(i + 1)] = Detections(d, np.round(rng.random(n_dets), 3), lab, ellipses(d, 260))
        else:
            detections[str(i + 1)] = Detections(d, np.round(rng.random(n_dets), 3), lab)
    return Dataset([f"class{c}" for c in range(1, n_classes + 1)], samples), detections


def to_pycocotools(dataset: Dataset, detections: dict[str, Detections]):
    """The same numbers as pycocotools objects (boxes as float64 x, y, w, h of the float32 boxes)."""

    def xywh(b):
        b = b.astype(np.float64)
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()

    images, anns, results = [], [], []
    for s in dataset:
        images.append({"id": int(s.id), "width": s.width, "height": s.height, "file_name": s.image_path.name})
        masks = s.masks or [None] * len(s.labels)
        for b, lab, a, c, m in zip(xywh(s.boxes), s.labels.tolist(), s.area.tolist(), s.iscrowd.tolist(), masks):
            ann = {"id": len(anns) + 1, "image_id": int(s.id), "category_id": lab, "bbox": b, "area": a}
            ann["iscrowd"] = int(c)
            if m is not None:
                ann["segmentation"] = rle_json(m)
            anns.append(ann)
        d = detections[s.id]
        masks = d.masks or [None] * len(d)
        for b, sc, lab, m in zip(xywh(d.boxes), d.scores.astype(np.float64).tolist(), d.labels.tolist(), masks):
            if m is None:
                results.append({"image_id": int(s.id), "category_id": lab, "bbox": b, "score": sc})
            else:  # no bbox: pycocotools' loadRes then takes the area from the mask, as for segm results
                results.append({"image_id": int(s.id), "category_id": lab, "segmentation": rle_json(m), "score": sc})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(dataset.classes)],
        }
        gt.createIndex()
        dt = gt.loadRes(results)
    return gt, dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox", help="boxes, or masks (segm)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    segm = args.iou_type == "segm"
    dataset, detections = synthetic(args.images, args.dets, args.classes, args.seed, masks=segm)
    n_gt = sum(len(s.labels) for s in dataset)
    print(
        f"input: {args.images} images, {n_gt} objects, {args.images * args.dets} detections, {args.classes} classes (seed {args.seed})"
    )
    gt, dt = to_pycocotools(dataset, detections)
    print(f"making the input: {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    ours = evaluate_coco(dataset, detections, args.iou_type)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(gt, dt, args.iou_type)
        E.evaluate()
        E.accumulate()
        E.summarize()
    t_ref = time.perf_counter() - t0

    worst = max(abs(ours[k] - v) for k, v in zip(STAT_NAMES, E.stats))
    bar = 0.0 if segm else 1e-6
    for k, v in zip(STAT_NAMES, E.stats):
        print(f"  {k:9s} rcnn {ours[k]:.6f}  pycocotools {v:.6f}")
    print(f"max |difference| over the 12 numbers: {worst:.2e} ({'OK' if worst <= bar else 'MISMATCH'})")
    print(f"rcnn.evaluation.evaluate_coco ({args.iou_type}): {t_ours:.2f} s")
    print(f"pycocotools evaluate+accumulate+summarize ({args.iou_type}): {t_ref:.2f} s")
    print(f"speed-up: {t_ref / t_ours:.1f}x")
    return 0 if worst <= bar else 1


if __name__ == "__main__":
    sys.exit(main())
