"""`rcnn propose`: region proposals for every image of a dataset, cached under --out."""

from __future__ import annotations


def register(subparsers) -> None:
    from rcnn.commands.checks import count
    from rcnn.commands.train import add_skip_bad_option

    p = subparsers.add_parser("propose", help="compute region proposals for a dataset (cached, parallel, resumable)")
    p.add_argument(
        "dataset", metavar="DATASET", help="VOC root, folder of images + .xml, COCO .json, YOLO root or .csv"
    )
    p.add_argument(
        "--method",
        choices=["selective_search", "sliding_window", "rpn"],
        help="default: --config's, else selective_search; a change of method drops the config's other settings",
    )
    p.add_argument(
        "--mode", help="selective search: single | fast | quality | custom (default: the measured custom setting)"
    )
    p.add_argument("--max-boxes", type=int, help="boxes kept per image (default 2000; rpn: 300)")
    p.add_argument("--model", metavar="MODEL.pt", help="rpn: the Faster R-CNN model file whose RPN proposes")
    p.add_argument(
        "--nms",
        type=float,
        dest="nms_threshold",
        help="rpn: the RPN's NMS IoU (default: the model's; 1.0 suppresses nothing)",
    )
    p.add_argument(
        "--longest-side", type=int, help="selective search: shrink longer images to this side (default 300; 0: never)"
    )
    p.add_argument("--min-size", type=float, help="smallest box side kept, pixels (default 20)")
    p.add_argument("--config", metavar="TOML", help="a config file whose [proposals] table sets method and parameters")
    p.add_argument("--split", help="ImageSets/Main/SPLIT.txt of a VOC root, or a YOLO root's split")
    p.add_argument("--images", help="image folder, when not the dataset's own")
    add_skip_bad_option(p)
    p.add_argument("--workers", type=count, help="processes (default and 0: all cores)")
    p.add_argument("--dask", metavar="ADDRESS", help="run on this Dask scheduler instead (needs rcnn[dask])")
    p.add_argument("--out", required=True, metavar="DIR", help="proposal cache folder")
    p.set_defaults(func=run)


def proposer_from_args(args):
    """The proposer named by --config's [proposals] table, overridden by the options given
    (merged by `rcnn.config.merge`'s rule: a different --method drops the table's settings)."""
    from rcnn.config import load_toml, merge
    from rcnn.proposals import ProposalsConfig, make_proposer, proposals_config

    options = {
        "method": args.method,
        "max_boxes": args.max_boxes,
        "min_size": args.min_size,
        "mode": args.mode,
        "longest_side": args.longest_side,
        "model": getattr(args, "model", None),
        "nms_threshold": getattr(args, "nms_threshold", None),
    }
    options = {k: v for k, v in options.items() if v is not None}
    if not args.config:
        return make_proposer(proposals_config(options, where="command line"))
    table = load_toml(args.config).get("proposals", {})
    proposals_config(table, where=args.config, table="proposals")  # the file's own mistakes, named as in the file
    merged = merge(table, options, cls=ProposalsConfig)
    return make_proposer(proposals_config(merged, where=f"{args.config} + command line", table="proposals"))


def run(args) -> int:
    import rcnn.detectors  # noqa: F401  registers the Faster R-CNN model files the rpn method reads
    from rcnn.commands.checks import output_folder
    from rcnn.commands.train import load_for_command
    from rcnn.proposals import ProposalStore

    output_folder(args.out)
    proposer = proposer_from_args(args)
    dataset = load_for_command(args, args.dataset)
    store = ProposalStore(args.out, proposer)
    stats = store.compute(dataset, workers=args.workers, dask=args.dask)
    rate = f", {stats['images_per_second']:.2f} img/s" if stats["images_per_second"] else ""
    damaged = f" ({stats['damaged']} damaged entries recomputed)" if stats["damaged"] else ""
    print(
        f"{stats['images']} images: {stats['computed']} computed, {stats['cached']} already cached, "
        + (f"{stats['reused']} taken from a larger cached list, " if stats["reused"] else "")
        + f"{stats['by_another_run']} by a concurrent run{damaged}"
        f" ({stats['seconds']:.1f} s{rate}); {len(dataset.skipped)} skipped -> {stats['folder']}"
    )
    return 0
