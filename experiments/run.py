"""Run one experiment by name: ``experiments/run.py NAME [--data PATH] [--only DATASETS]``;
``experiments/run.py NAME --replot`` draws an arms experiment's plot again from its results.json.

``windows-vs-proposals`` and ``budget`` have their own scripts; every other name is an arms
experiment (`arms.py`) read from ``experiments/configs/NAME.toml``. `make experiment-NAME`
calls this; `make experiments` runs them all.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import arms  # noqa: E402
import budget  # noqa: E402
import harness  # noqa: E402
import windows_vs_proposals  # noqa: E402

SCRIPTS = {"windows-vs-proposals": windows_vs_proposals, "budget": budget}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        names = sorted(p.stem for p in harness.CONFIGS.glob("*.toml") if "[experiment]" in p.read_text())
        print(f"usage: experiments/run.py NAME [--data PATH] [--only DATASETS]; NAME one of: {', '.join(names)}")
        return 2
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log or a pipe as they come
    name, rest = argv[0], argv[1:]
    if rest == ["--replot"] and name not in SCRIPTS:
        arms.replot(harness.ROOT / "experiments" / "results" / name)
        return 0
    script = SCRIPTS.get(name, arms)
    args = harness.parse_args(name, script.__doc__, rest)
    if not Path(args.config).is_file():
        print(f"no experiment config {args.config}")
        return 2
    for option in ("config", "out", "data", "base_config"):  # given from the caller's folder, not the root's
        if getattr(args, option):
            setattr(args, option, os.path.abspath(getattr(args, option)))
    harness.chdir_root()
    script.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
