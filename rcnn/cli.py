"""The `rcnn` command: thin wrappers that parse arguments and call the library.

Each subcommand lives in `rcnn/commands/NAME.py` as ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``; the commands import the library inside ``run`` so that
``rcnn --help`` does not load torch. An `RcnnError`, or an `OSError` no check caught before the
work (a full disk), is printed as one line and exits 1.

Process-wide settings belong here, at the entry point: torch's intra-op threads are set to
the CPUs this process may use, and OpenCV to one thread (its own threads would compete with
torch's and with the proposal workers, which run one image per core); OpenMP's threads sleep
instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets
it, before torch loads: on a busy 2-core CPU torch's default busy-wait made 2-thread CNN
inference 5 to 50 times slower, experiments/bench_features.py). The library itself changes
no environment variable.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rcnn import __version__
from rcnn.errors import RcnnError

COMMANDS = ["data", "evaluate", "propose", "recall", "train", "detect", "report", "explain"]
THREADED = {"train", "detect", "report", "explain"}  # commands that run a CNN


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcnn", description="Region-proposal object detection, the R-CNN way.")
    parser.add_argument("--version", action="version", version=f"rcnn {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"rcnn.commands.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads: before any command imports it
    from rcnn import progress

    args = build_parser().parse_args(argv)
    progress.log_to_stderr()  # the library's log messages, one `rcnn: ...` line each
    quiet, progress.QUIET = (
        progress.QUIET,
        progress.QUIET or args.quiet,
    )  # restored below: main() may be called in-process
    try:
        if args.command in THREADED:
            import cv2

            from rcnn.features.extractor import set_threads

            set_threads(0)
            cv2.setNumThreads(1)
        return int(args.func(args) or 0)
    except RcnnError as e:
        print(f"rcnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the file system's word (disk full, permissions) where no check caught it first
        where = f"{e.filename}: " if e.filename else ""
        print(f"rcnn {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rcnn {args.command}: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130
    finally:
        progress.QUIET = quiet


if __name__ == "__main__":
    sys.exit(main())
