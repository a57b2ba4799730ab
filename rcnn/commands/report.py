"""`rcnn report MODEL DATASET [--split S] [--images DIR] --out DIR`: the evaluation report."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    from rcnn.commands.checks import count
    from rcnn.commands.detect import add_test_rule_option
    from rcnn.commands.train import add_dask_option, add_device_option, add_skip_bad_option

    p = subparsers.add_parser("report", help="evaluation report: AP tables, PR curves, false-positive types, gallery")
    p.add_argument("model", help="model file written by `rcnn train`")
    p.add_argument("dataset", help="VOC root, folder of images + .xml, COCO .json, YOLO root or .csv")
    p.add_argument("--split", help="ImageSets/Main/SPLIT.txt of a VOC root, or a YOLO root's split")
    p.add_argument("--images", help="image folder (COCO)")
    add_skip_bad_option(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, results.json, plots and gallery/")
    p.add_argument(
        "--detections", metavar="DETS.json", help="report these detections (COCO results) instead of running the model"
    )
    p.add_argument("--title", help="report title")
    p.add_argument("--gallery", type=count, default=6, help="best and worst images to draw (default 6 each; 0: none)")
    p.add_argument("--top-fp", type=count, default=12, help="top-scoring false positives to draw (default 12)")
    p.add_argument("--threshold", type=float, help="gallery score threshold (default: the one maximising F1)")
    p.add_argument("--no-cache", action="store_true", help="run every image through the model instead of the caches")
    add_test_rule_option(p)
    add_device_option(p)
    add_dask_option(p)
    p.set_defaults(func=run)


def kept_records(path, dataset):
    """The results file's records, less those of the samples `--skip-bad` left out (said in
    one line); every record when none was."""
    from rcnn.datasets.coco import load_results

    records = load_results(path)
    if not dataset.skipped:
        return records
    ids = {s.id for s in dataset}
    kept = [r for r in records if not (isinstance(r, dict) and "image_id" in r and str(r["image_id"]) not in ids)]
    left = {str(r["image_id"]) for r in records if isinstance(r, dict) and "image_id" in r} - ids
    if left:
        print(f"note: {len(records) - len(kept)} detection(s) of {len(left)} skipped image(s) left out of {path}")
    return kept


def run(args) -> int:
    import time

    from rcnn.commands.checks import output_folder
    from rcnn.commands.detect import with_test_rule
    from rcnn.commands.train import load_for_command, use_dask
    from rcnn.config import to_dict
    from rcnn.datasets import read_detections
    from rcnn.detectors import load_model
    from rcnn.errors import RcnnError
    from rcnn.reports.report import build_report, report_model

    output_folder(args.out)
    model = with_test_rule(load_model(args.model, args.device), args.test_rule)
    if not (args.detections or args.no_cache):
        output_folder(
            model.config.cache_dir, f"{args.model}: cache_dir"
        )  # else nothing per-image is computed through the caches
        use_dask(model, args.dask)
    elif args.dask:
        raise RcnnError("--dask runs the cached stages: it does not go with --detections or --no-cache")
    dataset = load_for_command(args, args.dataset, classes=model.classes_)
    options = dict(gallery=args.gallery, top_false_positives=args.top_fp, score_threshold=args.threshold)
    title = args.title or f"{type(model).__name__} report: {args.model} on {args.dataset}" + (
        f" ({args.split})" if args.split else ""
    )
    extra = {"model": args.model, "dataset": args.dataset, "split": args.split}
    if dataset.skipped:
        extra["skipped (--skip-bad)"] = f"{len(dataset.skipped)}: " + ", ".join(str(p) for p, _ in dataset.skipped)
    if not args.detections:
        extra["test rule"] = model.config.test_rule
    if args.detections:
        start = time.perf_counter()
        detections = read_detections(args.detections, dataset, kept_records(args.detections, dataset))
        extra["detections"] = args.detections
        results = build_report(
            dataset,
            detections,
            args.out,
            title=title,
            extra=extra,
            config=to_dict(model.config),
            timings={"read_seconds": time.perf_counter() - start},
            **options,
        )
    else:
        results = report_model(
            model, dataset, args.out, title=title, extra=extra, use_cache=not args.no_cache, **options
        )
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    print(
        f"mAP VOC07 {fmt(results['voc07']['mAP'])}, VOC {fmt(results['voc']['mAP'])}, "
        f"COCO AP {fmt(results['coco']['AP'])} on {results['images']} images -> {Path(args.out) / 'report.md'}"
    )
    return 0
