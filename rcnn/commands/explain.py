"""`rcnn explain MODEL IMAGE --out DIR`: one page showing what each stage did on one image.

IMAGE is an image file (its ground truth is read from a same-stem VOC ``.xml`` beside it,
when there is one) or a dataset (VOC root, folder of images + .xml, COCO .json, YOLO root,
.csv) with ``--sample ID``. The page, ``DIR/index.md``, and its PNGs come from
`rcnn.reports.explain.explain`.
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    from rcnn.commands.checks import count
    from rcnn.commands.train import add_device_option, add_skip_bad_option

    p = subparsers.add_parser("explain", help="one page of pictures: what each stage of a model did on one image")
    p.add_argument("model", help="model file written by `rcnn train`")
    p.add_argument(
        "image", help="an image (ground truth from a same-stem .xml beside it, if any), or a dataset with --sample"
    )
    p.add_argument("--sample", metavar="ID", help="the sample of the dataset IMAGE to explain")
    p.add_argument("--split", help="VOC or YOLO split of a dataset IMAGE")
    p.add_argument("--images", help="image folder (COCO)")
    add_skip_bad_option(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for index.md and the pictures")
    p.add_argument(
        "--top", type=count, default=50, help="proposals (and R-CNN's windows) drawn as outlines (default 50)"
    )
    p.add_argument("--crops", type=count, default=24, help="warped crops shown, R-CNN (default 24)")
    add_device_option(p)
    p.set_defaults(func=run)


def find_sample(args, classes):
    """``(image path, sample or None)`` for IMAGE (and ``--sample``)."""
    from rcnn.commands.train import load_for_command
    from rcnn.datasets.voc import read_voc_folder
    from rcnn.errors import RcnnError

    src = Path(args.image)
    if args.sample is not None:
        dataset = load_for_command(args, src, classes=classes)
        for s in dataset:
            if s.id == args.sample:
                return s.image_path, s
        raise RcnnError(f"{src}: no sample {args.sample!r} (of {len(dataset)})")
    if src.is_dir() or src.suffix.lower() in (".json", ".csv", ".xml", ".yaml", ".txt"):
        raise RcnnError(f"{src}: a dataset; name the image with --sample ID")
    if not src.is_file():
        raise RcnnError(f"{src}: no such image")
    if src.with_suffix(".xml").is_file():
        for s in read_voc_folder(src.parent, classes=classes, check_images=False):
            if Path(s.image_path).resolve() == src.resolve():
                return src, s
    return src, None


def run(args) -> int:
    from rcnn.commands.checks import output_folder
    from rcnn.datasets import read_image
    from rcnn.detectors import load_model
    from rcnn.reports.explain import explain

    output_folder(args.out)
    model = load_model(args.model, args.device)
    path, sample = find_sample(args, model.classes_)
    gt = {} if sample is None else {"gt_boxes": sample.boxes, "gt_labels": sample.labels}
    result = explain(model, read_image(path), args.out, name=Path(path).name, top=args.top, crops=args.crops, **gt)
    print(f"{len(result['pictures'])} pictures, {len(result['detections'])} detection(s) -> {result['index']}")
    return 0
