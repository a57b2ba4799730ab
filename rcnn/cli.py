"""The `rcnn` command: thin wrappers that parse arguments and call the library.

Each subcommand lives in `rcnn/commands/NAME.py` as ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``. An `RcnnError` is printed as one line and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rcnn import __version__
from rcnn.errors import RcnnError

COMMANDS = ["data", "evaluate", "propose", "recall", "train", "detect", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcnn", description="Region-proposal object detection, the R-CNN way.")
    parser.add_argument("--version", action="version", version=f"rcnn {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"rcnn.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"rcnn.commands.{name}":
                raise
            continue  # a stage not built yet
        module.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        from rcnn import progress

        progress.QUIET = True
    try:
        return int(args.func(args) or 0)
    except RcnnError as e:
        print(f"rcnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rcnn {args.command}: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
