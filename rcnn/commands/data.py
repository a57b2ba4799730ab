"""`rcnn data check | convert | synth`: validate, convert and generate datasets.

A DATASET is a Pascal VOC root, a folder of images with same-stem VOC .xml files, a COCO
instances .json, a YOLO root (data.yaml or classes.txt, images/, labels/) or its data.yaml, or a .csv of boxes
(filename,width,height,class,xmin,ymin,xmax,ymax); see `rcnn.datasets.loader`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DATASET_HELP = (
    "VOC root, folder of images + .xml, COCO .json, YOLO root (data.yaml or classes.txt + labels/) or its data.yaml,"
    " or .csv"
)
SPLIT_HELP = "VOC: ImageSets/Main/SPLIT.txt; YOLO: the data.yaml entry, images/SPLIT/ or SPLIT.txt (default: all)"
FORMATS = ("voc", "coco", "yolo", "csv")


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="check, convert or generate datasets")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    check = sub.add_parser("check", help="report every problem in a dataset (exit 1 on errors)")
    check.add_argument("dataset", help=DATASET_HELP)
    check.add_argument("--split", help=SPLIT_HELP)
    check.add_argument(
        "--images", help="image folder (default: JPEGImages/, the folder, or the JSON's or CSV's folder)"
    )
    check.add_argument("--classes", help="the expected classes: comma-separated, or a file with one per line")
    check.add_argument("--no-images", action="store_true", help="check annotations only, do not open images")
    check.set_defaults(func=run_check)

    convert = sub.add_parser("convert", help="convert between VOC, COCO, YOLO and CSV")
    convert.add_argument("src", help=DATASET_HELP)
    convert.add_argument("dst", help="a .json file (COCO), a .csv file, or a folder: a VOC or YOLO root (see --format)")
    convert.add_argument("--split", help="split to read from a VOC or YOLO root and to write to a VOC or YOLO output")
    convert.add_argument("--images", help="image folder of SRC (default: as for check)")
    convert.add_argument(
        "--format",
        "--to",
        dest="to",
        metavar="{" + ",".join(FORMATS) + "}",
        choices=FORMATS,
        help="output format (default: coco for .json, csv for .csv; for a folder yolo when it already is a YOLO root, else voc)",
    )
    convert.add_argument("--link", action="store_true", help="VOC or YOLO output: link the images instead of copying")
    convert.add_argument(
        "--masks",
        choices=("rle", "polygon"),
        default="rle",
        help="COCO output: write masks as compressed RLE (default) or as polygons (both exact; crowd regions stay RLE)",
    )
    convert.add_argument("--skip-bad", action="store_true", help="leave out bad samples (counted) instead of failing")
    convert.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="accept image paths (COCO file_name, VOC <filename>, CSV filename, YOLO split entries and lists)"
        " that lead outside the image folder or YOLO root (absolute or ..)",
    )
    convert.set_defaults(func=run_convert)

    synth = sub.add_parser(
        "synth",
        help="generate the built-in synthetic shapes dataset (VOC layout)",
        epilog=PRESETS_EPILOG,
        formatter_class=PresetsHelp,
    )
    synth.add_argument("out", help="output VOC root, e.g. data/synth")
    synth.add_argument("--images", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, required=True, help="random seed (same seed, same bytes)")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    synth.add_argument("--test-fraction", type=float, default=0.2, help="share of images in test.txt (default 0.2)")
    synth.add_argument(
        "--preset",
        metavar="NAME",
        help="one step of the road to R-CNN (see below; default: multi, the set `make demo` uses)",
    )
    synth.set_defaults(func=run_synth)


PRESETS_EPILOG = "presets"  # filled in by `PresetsHelp` when the help is shown


class PresetsHelp(argparse.HelpFormatter):
    """``rcnn data synth --help``'s formatter: lists the presets only when the help is shown,
    so that building the parser (every ``rcnn`` call) does not import the data layer (torch)."""

    def add_text(self, text):
        if text is PRESETS_EPILOG:
            from rcnn.datasets.synthetic import PRESETS

            text = "presets, the road to R-CNN in order: " + "; ".join(f"{p.name}: {p.text}" for p in PRESETS.values())
        super().add_text(text)


def parse_classes(value):
    """``--classes``: None, a file with one class per line, or comma-separated names."""
    if value is None:
        return None
    from rcnn.cache import read_text
    from rcnn.errors import DatasetError

    path = Path(value)
    if path.is_file():
        try:
            text = read_text(path, "utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(path, f"cannot read the class list: {e}") from None
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [c.strip() for c in value.split(",") if c.strip()]


def run_check(args) -> int:
    from rcnn.datasets.check import check_dataset

    report = check_dataset(args.dataset, args.split, args.images, parse_classes(args.classes), not args.no_images)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 0 if report.ok else 1


def run_convert(args) -> int:
    from rcnn.datasets import load_dataset, write_coco, write_csv_labels, write_voc, write_yolo
    from rcnn.datasets.loader import dataset_kind
    from rcnn.datasets.yolo import is_yolo_root

    kind = dataset_kind(args.src)
    split = args.split if kind in ("voc", "yolo") else None
    to = args.to or output_format(args.dst, is_yolo_root)
    # Images are checked (exist, not too large, sizes match) unless COCO goes to COCO, which
    # needs only the annotations; image paths must stay inside the image folder either way.
    check = not (kind == "coco" and to == "coco")
    dataset = load_dataset(
        args.src, split, args.images, args.skip_bad, check_images=check, allow_outside_images=args.allow_outside_images
    )
    note = None
    images = "link" if args.link else "copy"
    if to in ("coco", "csv"):
        if to == "coco":
            base = write_coco(dataset, args.dst, mask_format=args.masks)
        else:
            base = write_csv_labels(dataset, args.dst)
        if base != Path(os.path.abspath(Path(args.dst).parent)):
            note = f"note: the images lie outside {Path(args.dst).parent}; read {args.dst} with --images {base}"
    elif to == "yolo":
        yaml_note = write_yolo(dataset, args.dst, args.split, images)
        note = yaml_note and f"note: {yaml_note}"
    else:
        write_voc(dataset, args.dst, args.split, images)
    dropped = [
        flag
        for flag, attr, formats in (
            ("difficult", "difficult", ("yolo", "csv")),
            ("crowd", "iscrowd", ("voc", "yolo", "csv")),
        )
        if to in formats and any(getattr(sample, attr).any() for sample in dataset)
    ]
    if dropped:
        print(f"note: {to} has no form for the {' and '.join(dropped)} flags; they were dropped")
    masks = sum(m is not None for s in dataset for m in (s.masks or []))
    if masks and to == "csv":
        print("note: csv has no form for masks; they were dropped")
    if masks and to == "voc":
        from rcnn.datasets.masks import overlapping

        shared = sum(overlapping(s.masks) for s in dataset if s.masks is not None)
        if shared:
            print(
                f"note: {shared} images have objects whose masks overlap; VOC's SegmentationObject keeps one"
                " object per pixel (the later one), so their masks do not read back the same"
            )
    boxes = sum(len(s.boxes) for s in dataset)
    shown = f", {masks} masks" if masks and to != "csv" else ""
    print(f"wrote {len(dataset)} samples, {boxes} boxes{shown}, {dataset.num_classes} classes to {args.dst} ({to})")
    if note:
        print(note)
    for path, reason in dataset.repairs:
        print(f"repaired: {path}: {reason}")
    for path, reason in dataset.skipped:
        print(f"skipped: {path}: {reason}")
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} bad samples (see above)")
    return 0


def output_format(dst, is_yolo_root) -> str:
    """``convert``'s output format when ``--format`` is not given: by the destination."""
    suffix = Path(dst).suffix.lower()
    if suffix in (".json", ".csv"):
        return "coco" if suffix == ".json" else "csv"
    return "yolo" if is_yolo_root(dst) else "voc"


def run_synth(args) -> int:
    from rcnn.datasets.synthetic import make_synthetic

    dataset = make_synthetic(args.out, args.images, args.seed, args.size, args.test_fraction, args.preset)
    counts = {n: sum(int((s.labels == i + 1).sum()) for s in dataset) for i, n in enumerate(dataset.classes)}
    empty = sum(len(s.labels) == 0 for s in dataset)
    print(
        f"wrote {len(dataset)} images to {args.out}: "
        + ", ".join(f"{n} {c}" for n, c in counts.items())
        + f"; {empty} without an object"
    )
    return 0
