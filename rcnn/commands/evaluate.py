"""`rcnn evaluate`: score a detections file against a dataset (VOC AP or COCO AP/AR)."""

from __future__ import annotations

import json
import math

from rcnn.errors import RcnnError

METRICS = {"voc07": "VOC2007 11-point AP", "voc": "VOC2010+ all-point AP", "coco": "COCO AP@[.5:.95] and AR"}


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="score detections against ground truth (VOC or COCO metrics)")
    p.add_argument("--gt", required=True, metavar="DATASET", help="VOC root, folder of images + .xml, or COCO .json")
    p.add_argument("--detections", required=True, metavar="DETS.json", help="COCO-style results file")
    p.add_argument("--metric", choices=list(METRICS), default="voc", help="voc07 | voc | coco (default voc)")
    p.add_argument("--iou", type=float, help="IoU threshold of the voc metrics (default 0.5)")
    p.add_argument("--inclusive", action="store_true", help="voc metrics: +1 pixel widths, for boxes stored as inclusive corners")
    p.add_argument("--split", help="ImageSets/Main/SPLIT.txt of a VOC root")
    p.add_argument("--images", help="image folder (not needed: only annotations are read)")
    p.add_argument("--out", metavar="REPORT.json", help="write the numbers as JSON")
    p.set_defaults(func=run)


def _fmt(x) -> str:
    return "   -  " if x is None or (isinstance(x, float) and (math.isnan(x) or x < 0)) else f"{x:6.4f}"


def run(args) -> int:
    from rcnn.datasets import load_dataset, read_detections
    from rcnn.datasets.check import write_atomic
    from rcnn.evaluation import evaluate_coco, evaluate_voc

    if args.metric == "coco" and (args.iou is not None or args.inclusive):
        raise RcnnError("--iou and --inclusive apply to the voc metrics; coco uses IoU .50:.05:.95")
    dataset = load_dataset(args.gt, args.split, args.images, check_images=False)
    detections = read_detections(args.detections, dataset)
    n_gt = [0] * dataset.num_classes
    for s in dataset:
        for label in s.labels:
            n_gt[label - 1] += 1
    n_det = sum(len(d) for d in detections.values())
    print(f"{args.gt}: {len(dataset)} images, {sum(n_gt)} objects; {args.detections}: {n_det} detections")

    if args.metric == "coco":
        report = evaluate_coco(dataset, detections)
        title = "AP@[.5:.95]"
    else:
        iou = 0.5 if args.iou is None else args.iou
        result = evaluate_voc(dataset, detections, iou, args.metric == "voc07", args.inclusive)
        report = result.to_dict()
        report.update(metric=args.metric, iou=iou, inclusive=args.inclusive)
        title = f"AP@{iou:g}"

    width = max([len("class")] + [len(c) for c in dataset.classes])
    print(f"{'class':{width}s}  objects  {title}")
    for name, count in zip(dataset.classes, n_gt):
        print(f"{name:{width}s}  {count:7d}  {_fmt(report['per_class'][name])}")
    if args.metric == "coco":
        from rcnn.evaluation.coco import STAT_NAMES

        for name in STAT_NAMES:
            print(f"{name:9s} {_fmt(report[name])}")
    else:
        print(f"{'mAP':{width}s}  {sum(n_gt):7d}  {_fmt(report['mAP'])}  ({METRICS[args.metric]})")
    if args.out:
        write_atomic(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
