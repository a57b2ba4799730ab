"""`rcnn recall`: proposal quality (recall, AR, MABO at several k) from a proposal cache."""

from __future__ import annotations

import json

from rcnn.errors import RcnnError


def register(subparsers) -> None:
    from rcnn.commands.train import add_skip_bad_option

    p = subparsers.add_parser("recall", help="recall / AR / MABO of cached proposals against ground truth")
    p.add_argument(
        "dataset", metavar="DATASET", help="VOC root, folder of images + .xml, COCO .json, YOLO root or .csv"
    )
    p.add_argument("--proposals", required=True, metavar="DIR", help="the --out folder of `rcnn propose`")
    p.add_argument("--key", help="which proposer's files, when DIR holds several (a prefix of the key)")
    p.add_argument("--ks", default="10,50,100,200,500,1000,2000", help="comma-separated box counts")
    p.add_argument("--include-difficult", action="store_true", help="count difficult and crowd objects too")
    p.add_argument("--split", help="ImageSets/Main/SPLIT.txt of a VOC root, or a YOLO root's split")
    p.add_argument("--images", help="image folder, when not the dataset's own")
    add_skip_bad_option(p)
    p.add_argument("--out", metavar="REPORT.json", help="write the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from rcnn.cache import write_text
    from rcnn.commands.train import load_for_command
    from rcnn.evaluation.recall import format_report, proposal_recall
    from rcnn.proposals import ProposalStore

    try:
        ks = [int(k) for k in args.ks.split(",")]
    except ValueError:
        raise RcnnError(f"--ks: expected comma-separated integers, got {args.ks!r}") from None
    from rcnn.commands.checks import output_file

    if args.out:
        output_file(args.out)
    dataset = load_for_command(args, args.dataset)
    store = ProposalStore.open(args.proposals, args.key)
    report = proposal_recall(
        dataset, store.load, ks, {s.id: store.seconds(s) for s in dataset}, include_difficult=args.include_difficult
    )
    report["proposer"] = store.proposer.params()
    print(f"{args.dataset}: {store.folder.name}")
    print(format_report(report))
    if args.out:
        write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
