"""`rcnn data check | convert | synth`: validate, convert and generate datasets."""

from __future__ import annotations

import os
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="check, convert or generate datasets")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    check = sub.add_parser("check", help="report every problem in a dataset (exit 1 on errors)")
    check.add_argument("dataset", help="VOC root, folder of images + .xml, or COCO .json")
    check.add_argument("--split", help="ImageSets/Main/SPLIT.txt of a VOC root (default: all annotations)")
    check.add_argument("--images", help="image folder (default: JPEGImages/, the folder, or the JSON's folder)")
    check.add_argument("--classes", help="the expected classes: comma-separated, or a file with one per line")
    check.add_argument("--no-images", action="store_true", help="check annotations only, do not open images")
    check.set_defaults(func=run_check)

    convert = sub.add_parser("convert", help="convert between VOC and COCO")
    convert.add_argument("src", help="VOC root, folder of images + .xml, or COCO .json")
    convert.add_argument("dst", help="a VOC root folder, or a .json file for COCO")
    convert.add_argument("--split", help="split to read from a VOC root and to write to a VOC output")
    convert.add_argument("--images", help="image folder of SRC (default: as for check)")
    convert.add_argument("--to", choices=["voc", "coco"], help="output format (default: coco for .json, else voc)")
    convert.add_argument("--link", action="store_true", help="VOC output: link the images instead of copying")
    convert.add_argument("--skip-bad", action="store_true", help="leave out bad samples (counted) instead of failing")
    convert.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="accept image paths (COCO file_name, VOC <filename>) that lead outside the image folder (absolute or ..)",
    )
    convert.set_defaults(func=run_convert)

    synth = sub.add_parser("synth", help="generate the built-in synthetic shapes dataset (VOC layout)")
    synth.add_argument("out", help="output VOC root, e.g. data/synth")
    synth.add_argument("--images", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, required=True, help="random seed (same seed, same bytes)")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    synth.add_argument("--test-fraction", type=float, default=0.2, help="share of images in test.txt (default 0.2)")
    synth.set_defaults(func=run_synth)


def parse_classes(value):
    """``--classes``: None, a file with one class per line, or comma-separated names."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [c.strip() for c in value.split(",") if c.strip()]


def run_check(args) -> int:
    from rcnn.datasets.check import check_dataset

    report = check_dataset(args.dataset, args.split, args.images, parse_classes(args.classes), not args.no_images)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 0 if report.ok else 1


def run_convert(args) -> int:
    from rcnn.datasets import load_dataset, write_coco, write_voc
    from rcnn.datasets.loader import dataset_kind

    kind = dataset_kind(args.src)
    split = args.split if kind == "voc" else None
    to = args.to or ("coco" if Path(args.dst).suffix.lower() == ".json" else "voc")
    # Images are checked (exist, not too large, sizes match) unless COCO goes to COCO, which
    # needs only the annotations; image paths must stay inside the image folder either way.
    check = not (kind == "coco" and to == "coco")
    dataset = load_dataset(
        args.src, split, args.images, args.skip_bad, check_images=check, allow_outside_images=args.allow_outside_images
    )
    note = None
    if to == "coco":
        base = write_coco(dataset, args.dst)
        if base != Path(os.path.abspath(Path(args.dst).parent)):
            note = f"note: the images lie outside {Path(args.dst).parent}; read {args.dst} with --images {base}"
    else:
        write_voc(dataset, args.dst, args.split, "link" if args.link else "copy")
    boxes = sum(len(s.boxes) for s in dataset)
    print(f"wrote {len(dataset)} samples, {boxes} boxes, {dataset.num_classes} classes to {args.dst} ({to})")
    if note:
        print(note)
    for path, reason in dataset.repairs:
        print(f"repaired: {path}: {reason}")
    for path, reason in dataset.skipped:
        print(f"skipped: {path}: {reason}")
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} bad samples (see above)")
    return 0


def run_synth(args) -> int:
    from rcnn.datasets.synthetic import make_synthetic

    dataset = make_synthetic(args.out, args.images, args.seed, args.size, args.test_fraction)
    counts = {n: sum(int((s.labels == i + 1).sum()) for s in dataset) for i, n in enumerate(dataset.classes)}
    print(f"wrote {len(dataset)} images to {args.out}: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    return 0
