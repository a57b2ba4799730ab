"""`rcnn detect MODEL.pt IMAGE|DIR|DATASET --out DETS.json [--draw DIR] [--skip-bad]`.

Each image's detections are stored as soon as they are found (`rcnn.cache.ImageStore` in
``.DETS.json.parts/<model hash>[-candidatesK]/`` beside the output, keyed by the image's content), so an
interrupted or failed run keeps its finished images and a re-run with the same model resumes;
the folder is removed once the results file is written.

With ``--dask ADDRESS`` each image's whole detection (proposals, CNN, heads, NMS: what the
model's `detect` does) runs on the Dask workers, which load the model file and write each
image's entry into that same folder; the client then draws and writes the results as
without. The model file and the output's folder must be on storage every worker sees
(checked first, `rcnn.cluster`); detections equal a local run's.

On a dataset (annotations beside the images) the model's `test_rule` applies (`--test-rule`
overrides it): under ``rcnn`` the parts hold each image's candidates (each class's best
`top_per_class` boxes, no threshold, no NMS) and the per-class thresholds over the set are
chosen once every image is done, so a resumed run writes what an uninterrupted one would.
Plain images (one, or a folder without annotations) get `Detector.detect`'s fixed threshold.
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    from rcnn.commands.checks import count
    from rcnn.commands.train import add_device_option

    parser = subparsers.add_parser("detect", help="detect objects with a trained model")
    parser.add_argument("model", help="model file written by `rcnn train`")
    parser.add_argument(
        "input",
        help="an image, a folder of images, or a dataset (VOC root, folder with .xml, COCO .json, YOLO root, .csv)",
    )
    parser.add_argument("--split", help="VOC or YOLO split of a dataset input")
    parser.add_argument("--images", help="image folder (COCO)")
    parser.add_argument("--out", required=True, help="COCO results JSON to write")
    parser.add_argument("--draw", help="folder to write images with the detections drawn")
    parser.add_argument(
        "--draw-limit", type=count, default=20, help="draw at most this many images (default 20; 0: all)"
    )
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip (count and name) unreadable images instead of failing"
    )
    parser.add_argument(
        "--draw-min-score",
        type=float,
        help="draw only detections scoring at least this (default: 0 for SVM margins, 0.5 for probabilities)",
    )
    add_test_rule_option(parser)
    add_device_option(parser)
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="detect on this Dask scheduler's workers (needs rcnn[dask]; the model and --out on storage every "
        "worker sees)",
    )
    parser.set_defaults(func=run)


def add_test_rule_option(parser) -> None:
    parser.add_argument(
        "--test-rule",
        choices=["rcnn", "threshold"],
        help="over a dataset: rcnn (per-class thresholds over the set, R-CNN's rcnn_test.m) or threshold "
        "(the fixed score threshold, as on one image); default: the model's config (rcnn unless set)",
    )


def with_test_rule(model, rule: str | None):
    """`model` with its config's `test_rule` replaced by `rule` (None: unchanged)."""
    from dataclasses import replace

    return model.use_config(replace(model.config, test_rule=rule)) if rule else model


def images_as_dataset(path: Path, classes):
    """A `Dataset` without annotations for one image or a folder of plain images."""
    from rcnn.datasets import Dataset, Sample
    from rcnn.datasets.images import IMAGE_SUFFIXES
    from rcnn.errors import DatasetError

    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(path, "no images found")
    first = {}
    for f in files:
        if f.stem in first:
            raise DatasetError(
                path, f"{first[f.stem].name} and {f.name} share the file stem {f.stem!r}; image ids would clash"
            )
        first[f.stem] = f
    return Dataset(list(classes), [Sample(f.stem, f, 0, 0) for f in files])


def run(args) -> int:
    import shutil

    from rcnn.cache import ImageStore, file_hash
    from rcnn.commands.checks import output_file, output_folder
    from rcnn.commands.train import report_skipped
    from rcnn.datasets import load_dataset, read_image
    from rcnn.datasets.coco import write_detections
    from rcnn.datasets.loader import dataset_kind
    from rcnn.detectors import load_model
    from rcnn.detectors.base import take
    from rcnn.reports.draw import draw_detections, save_image

    output_file(args.out)
    if args.draw:
        output_folder(args.draw, "--draw")
    model = with_test_rule(load_model(args.model, args.device), args.test_rule)
    src = Path(args.input)
    annotated = src.suffix.lower() in (".json", ".csv", ".yaml", ".yml") or (
        src.is_dir() and (dataset_kind(src) in ("voc", "yolo") or any(src.glob("*.xml")))
    )
    if annotated:
        dataset = load_dataset(src, args.split, args.images, args.skip_bad, classes=model.classes_)
        report_skipped(dataset)
    else:
        dataset = images_as_dataset(src, model.classes_)
        model = with_test_rule(model, "threshold" if model.set_rule else None)  # plain images: detect's threshold
    set_rule = model.set_rule
    out = Path(args.out)
    model_key = file_hash(args.model)
    kind = f"-candidates{model.config.top_per_class}" if set_rule else ""  # what an entry holds
    parts = ImageStore(
        out.parent / f".{out.name}.parts" / (model_key + kind),
        {"model": str(args.model), "model_hash": model_key, "entries": kind.lstrip("-") or "detections"},
    )
    remote = {}  # on the cluster: image path -> None (stored) or the ImageError's message (met again here)
    if args.dask:
        remote = detect_on_cluster(args.dask, args.model, model_key, args.device, dataset, parts, set_rule)
    resumed = sum(str(s.image_path) not in remote and _stored(parts, s.image_path) for s in dataset)
    detections = model.detect_dataset(dataset, use_cache=False, parts=parts, skip_bad=args.skip_bad)
    skipped = [s.id for s in dataset if s.id not in detections]
    if args.draw:
        min_score = model.draw_threshold if args.draw_min_score is None else args.draw_min_score
        drawn = [s for s in dataset.samples if s.id in detections][: args.draw_limit or None]
        for sample in drawn:
            d = detections[sample.id]
            shown = take(d, d.scores >= min_score)
            picture = draw_detections(
                read_image(sample.image_path), shown, model.classes_, sample.boxes if annotated else None
            )
            save_image(Path(args.draw) / f"{sample.id}.jpg", picture)
    write_detections(out, detections, dataset)
    shutil.rmtree(parts.folder.parent, ignore_errors=True)
    total = sum(len(d) for d in detections.values())
    print(
        f"{total} detections on {len(detections)} image(s) -> {args.out}"
        + (f" ({resumed} from an interrupted run)" if resumed else "")
        + (" (test rule rcnn: per-class thresholds over the set)" if set_rule else "")
        + (f"; drawn in {args.draw}" if args.draw else "")
    )
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}")
    return 0


ENTRY = ("boxes", "scores", "labels")


def _stored(parts, image_path) -> bool:
    """Whether `parts` holds an entry of the image (an unreadable image has none)."""
    from rcnn.errors import ImageError

    try:
        return parts.has(image_path, require=ENTRY)
    except ImageError:
        return False


def detect_on_cluster(address: str, model_path, model_key: str, device, dataset, parts, candidates: bool) -> dict:
    """Detect every image of `dataset` not in `parts` (an `ImageStore`) on the Dask scheduler
    at `address`, each worker writing its images' entries into `parts` (with `candidates`:
    `Detector.candidates`, for the test rule over the set). Returns ``{image
    path: None}`` for each stored image, or the message of the `ImageError` it raised."""
    from rcnn.cluster import dask_client, remote_path
    from rcnn.errors import ImageError, RcnnError
    from rcnn.progress import progress

    todo = []
    for s in dataset:
        try:
            if not parts.has(s.image_path, require=ENTRY):
                todo.append(str(s.image_path))
        except ImageError:  # unreadable here: the local loop reports (or skips) it
            continue
    out = {}
    if not todo:
        return out
    model_path, folder = remote_path(model_path), remote_path(parts.folder)
    hint = "put --out on storage every worker sees"
    with dask_client(address, parts.folder, [todo[0]], [model_path], hint=hint) as client:
        from dask.distributed import as_completed

        futures = {
            client.submit(
                _detect_task,
                model_path,
                model_key,
                device,
                remote_path(image),
                folder,
                parts.params,
                candidates,
                pure=False,
            ): image
            for image in todo
        }
        with progress(total=len(futures), desc="detect (Dask)") as bar:
            for future in as_completed(futures):
                kind, message = future.result()
                if kind == "error":
                    raise RcnnError(message)
                out[futures[future]] = message  # None, or an unreadable image's message
                bar.update(1)
    return out


def _detect_task(model_path: str, model_key: str, device, image_path: str, folder: str, params: dict, candidates: bool):
    """Runs on a Dask worker: detect on one image and store the entry. ``("ok", None)``,
    ``("image", message)`` for an unreadable image, or ``("error", text)``."""
    import socket

    from rcnn.cache import ImageStore
    from rcnn.datasets import read_image
    from rcnn.detectors.base import part_arrays
    from rcnn.errors import ImageError, RcnnError
    from rcnn.features.distributed import worker_threads

    try:
        worker_threads()
        model = _worker_model(model_path, model_key, device)
        image = read_image(image_path)
        d = model.candidates(image) if candidates else model.detect(image)
        ImageStore(folder, params).write(image_path, **part_arrays(d))
    except ImageError as e:
        return "image", e.message
    except RcnnError as e:  # rcnn errors do not survive pickling between processes: send the text
        return "error", f"{e} (on Dask worker {socket.gethostname()})"
    return "ok", None


_models: dict = {}


def _worker_model(model_path: str, model_key: str, device):
    """The model a worker has loaded (one at a time), checked to be the client's file."""
    from rcnn.cache import file_hash
    from rcnn.detectors import load_model
    from rcnn.errors import ModelError

    key = (model_path, model_key, device)
    if key not in _models:
        if file_hash(model_path) != model_key:
            raise ModelError(f"{model_path}: the Dask worker reads another file than the client")
        _models.clear()
        _models[key] = load_model(model_path, device)
    return _models[key]
