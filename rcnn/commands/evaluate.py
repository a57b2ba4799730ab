"""`rcnn evaluate`: score a detections file against a dataset (VOC AP, COCO box or mask AP/AR).

The classes scored are the model's: `--classes` (only those: the ground truth's objects and
the detections of any other class are left out, and counted), or else the ground truth's
plus every class the detections name that the ground truth lacks (a class with no ground
truth). Such a class
scores as pycocotools scores it: COCO AP/AR -1, left out of every mean (the twelve numbers do
not change); VOC AP n/a (None in the report), left out of the mAP, as the devkit's mean over
classes with ground truth.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rcnn.errors import RcnnError

METRICS = {
    "voc07": "VOC2007 11-point AP",
    "voc": "VOC2010+ all-point AP",
    "coco": "COCO AP@[.5:.95] and AR",
    "segm": "COCO mask AP@[.5:.95] and AR",
}


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="score detections against ground truth (VOC or COCO metrics)")
    p.add_argument(
        "--gt",
        required=True,
        metavar="DATASET",
        help="VOC root, folder of images + .xml, COCO .json, YOLO root or .csv",
    )
    p.add_argument("--detections", required=True, metavar="DETS.json", help="COCO-style results file")
    p.add_argument(
        "--metric", choices=list(METRICS), default="voc", help="voc07 | voc | coco | segm (COCO mask AP) (default voc)"
    )
    p.add_argument("--iou", type=float, help="IoU threshold of the voc metrics, 0 < IOU <= 1 (default 0.5)")
    p.add_argument(
        "--inclusive", action="store_true", help="voc metrics: +1 pixel widths, for boxes stored as inclusive corners"
    )
    p.add_argument("--split", help="ImageSets/Main/SPLIT.txt of a VOC root, or a YOLO root's split")
    p.add_argument("--images", help="image folder (not needed: only annotations are read)")
    p.add_argument(
        "--classes",
        help="the classes to score, comma-separated or a file with one per line (default: the ground truth's"
        " plus any the detections name); objects and detections of other classes are left out; classes without"
        " ground truth are scored n/a and left out of the means",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out samples whose annotations are bad (each named with its reason, and counted), "
        "with their detections",
    )
    p.add_argument("--out", metavar="REPORT.json", help="write the numbers as JSON")
    p.set_defaults(func=run)


def _fmt(x) -> str:
    return "   n/a" if x is None or (isinstance(x, float) and (math.isnan(x) or x < 0)) else f"{x:6.4f}"


def _with_detected_classes(dataset, records):
    """`dataset` plus a class with no ground truth for each category the detections name that
    it lacks (COCO ground truth: an unknown category id N becomes the class "category N")."""
    from rcnn.datasets.coco import result_categories

    found = result_categories(records)
    if dataset.category_ids is not None:
        extra = [c for c in found if isinstance(c, int) and c not in dataset.category_ids]
        names = {c: f"category {c}" for c in extra}
        clash = [n for n in names.values() if n in dataset.classes]
        if clash:
            raise RcnnError(f"{clash[0]!r} names a class and an unknown category id; give --classes")
        return dataset.with_classes(dataset.classes + list(names.values()), {n: c for c, n in names.items()}), list(
            names.values()
        )
    extra = [c for c in found if isinstance(c, str) and c not in dataset.classes]
    return dataset.with_classes(sorted(dataset.classes + extra)), extra


def _split_holding(gt, ids, total: int):
    """The smallest split of the VOC root `gt` (``ImageSets/Main/SPLIT.txt``) that holds every
    sample id of `ids` and fewer than `total` images, or None."""
    from rcnn.datasets.loader import dataset_kind

    if dataset_kind(gt) != "voc":
        return None
    best = None
    for path in sorted((Path(gt) / "ImageSets" / "Main").glob("*.txt")):
        try:
            members = {line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
        except (OSError, UnicodeDecodeError):
            continue
        if ids <= members and len(members) < total and (best is None or len(members) < best[0]):
            best = (len(members), path.stem)
    return best and best[1]


def run(args) -> int:
    from rcnn.cache import write_text
    from rcnn.commands.checks import output_file
    from rcnn.commands.data import parse_classes
    from rcnn.commands.report import kept_records
    from rcnn.commands.train import report_skipped
    from rcnn.datasets import load_dataset, read_detections
    from rcnn.evaluation import evaluate_coco, evaluate_voc
    from rcnn.evaluation.voc import check_iou

    coco = args.metric in ("coco", "segm")
    if coco and (args.iou is not None or args.inclusive):
        raise RcnnError(f"--iou and --inclusive apply to the voc metrics; {args.metric} uses IoU .50:.05:.95")
    iou = 0.5 if args.iou is None else args.iou
    try:
        check_iou(iou)
    except ValueError:
        raise RcnnError(f"--iou must be in (0, 1], not {args.iou:g}") from None
    classes = parse_classes(args.classes)
    if args.out:
        output_file(args.out)  # before the work
    # Only the annotations are read: no image is opened, so image paths are not checked either.
    dataset = load_dataset(
        args.gt, args.split, args.images, args.skip_bad, check_images=False, allow_outside_images=True
    )
    report_skipped(dataset)
    records = kept_records(args.detections, dataset)  # less the skipped samples' (said in one line)
    added, left_out = [], None
    if classes is None:
        dataset, added = _with_detected_classes(dataset, records)
    else:
        objects = sum(len(s.labels) for s in dataset)
        try:
            dataset = dataset.only_classes(classes)
        except ValueError as e:
            raise RcnnError(f"--classes: {e}") from None
        names = set(dataset.category_ids if dataset.category_ids is not None else dataset.classes)
        kept = [r for r in records if not isinstance(r, dict) or r.get("category_id") in names]
        left_out = (objects - sum(len(s.labels) for s in dataset), len(records) - len(kept))
        records = kept
    detections = read_detections(args.detections, dataset, records)
    n_gt = [0] * dataset.num_classes
    for s in dataset:
        for label in s.labels:
            n_gt[label - 1] += 1
    n_det = sum(len(d) for d in detections.values())
    print(f"{args.gt}: {len(dataset)} images, {sum(n_gt)} objects; {args.detections}: {n_det} detections")
    if added:
        print(f"classes named only by the detections (no ground truth): {', '.join(map(str, added))}")
    if left_out and any(left_out):
        print(f"left out, of classes not in --classes: {left_out[0]} objects, {left_out[1]} detections")
    named = {k for k, d in detections.items() if len(d)}
    if 0 < len(named) < len(dataset):
        split = None if args.split else _split_holding(args.gt, named, len(dataset))
        hint = f"give --split {split}" if split else "to score one split of the ground truth, give --split"
        print(
            f"warning: the detections name {len(named)} of the {len(dataset)} images; the other"
            f" {len(dataset) - len(named)} count as images where nothing was detected"
            + ("" if args.split else f" ({hint})")
        )

    if coco:
        report = evaluate_coco(dataset, detections, "segm" if args.metric == "segm" else "bbox")
        title = "mask AP@[.5:.95]" if args.metric == "segm" else "AP@[.5:.95]"
    else:
        result = evaluate_voc(dataset, detections, iou, args.metric == "voc07", args.inclusive)
        report = result.to_dict()
        report.update(metric=args.metric, iou=iou, inclusive=args.inclusive)
        title = f"AP@{iou:g}"

    width = max([len("class")] + [len(c) for c in dataset.classes])
    print(f"{'class':{width}s}  objects  {title}")
    for name, count in zip(dataset.classes, n_gt):
        print(f"{name:{width}s}  {count:7d}  {_fmt(report['per_class'][name])}")
    if coco:
        from rcnn.evaluation.coco import STAT_NAMES

        for name in STAT_NAMES:
            print(f"{name:9s} {_fmt(report[name])}")
    else:
        print(f"{'mAP':{width}s}  {sum(n_gt):7d}  {_fmt(report['mAP'])}  ({METRICS[args.metric]})")
    if 0 in n_gt:
        print("n/a: no ground truth; such classes are left out of the means (as pycocotools and the VOC devkit do)")
    if args.out:
        write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
