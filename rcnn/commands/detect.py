"""`rcnn detect MODEL.pt IMAGE|DIR|DATASET --out DETS.json [--draw DIR]`."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("detect", help="detect objects with a trained model")
    parser.add_argument("model", help="model file written by `rcnn train`")
    parser.add_argument("input", help="an image, a folder of images, or a dataset (VOC root, folder with .xml, COCO .json)")
    parser.add_argument("--split", help="VOC split of a dataset input")
    parser.add_argument("--images", help="image folder (COCO)")
    parser.add_argument("--out", required=True, help="COCO results JSON to write")
    parser.add_argument("--draw", help="folder to write images with the detections drawn")
    parser.add_argument("--draw-limit", type=int, default=20, help="draw at most this many images (default 20; 0: all)")
    parser.add_argument("--draw-min-score", type=float,
                        help="draw only detections scoring at least this (default: 0 for SVMs, 0.5 for softmax)")
    parser.set_defaults(func=run)


def images_as_dataset(path: Path, classes):
    """A `Dataset` without annotations for one image or a folder of plain images."""
    from rcnn.datasets import Dataset, Sample
    from rcnn.errors import DatasetError

    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(path, "no images found")
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        raise DatasetError(path, "two images share a file stem; image ids would clash")
    return Dataset(list(classes), [Sample(f.stem, f, 0, 0) for f in files])


def run(args) -> int:
    from rcnn.datasets import Detections, load_dataset, read_image
    from rcnn.datasets.coco import write_detections
    from rcnn.detector import RCNN
    from rcnn.progress import progress
    from rcnn.reports.draw import draw_detections, save_image

    model = RCNN.load(args.model)
    src = Path(args.input)
    annotated = src.suffix.lower() == ".json" or (src.is_dir() and (any(src.glob("*.xml")) or (src / "Annotations").is_dir()))
    if annotated:
        dataset = load_dataset(src, args.split, args.images, classes=model.classes_)
    else:
        dataset = images_as_dataset(src, model.classes_)
    detections = {}
    limit = args.draw_limit or len(dataset)
    min_score = args.draw_min_score
    if min_score is None:
        min_score = 0.0 if model.config.classifier == "svm" else 0.5
    for i, sample in enumerate(progress(dataset.samples, desc="detect")):
        image = read_image(sample.image_path)
        detections[sample.id] = d = model.detect(image)
        if args.draw and i < limit:
            shown = d.scores >= min_score
            shown = Detections(d.boxes[shown], d.scores[shown], d.labels[shown])
            drawn = draw_detections(image, shown, model.classes_, sample.boxes if annotated else None)
            save_image(Path(args.draw) / f"{sample.id}.jpg", drawn)
    write_detections(args.out, detections, dataset)
    total = sum(len(d) for d in detections.values())
    print(f"{total} detections on {len(dataset)} image(s) -> {args.out}" + (f"; drawn in {args.draw}" if args.draw else ""))
    return 0
