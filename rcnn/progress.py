"""Progress bars (tqdm) for every loop over a dataset: items per second, quiet off a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm

QUIET = False  # set by `rcnn --quiet`


def progress(iterable=None, desc: str = "", total=None, unit: str = "img", **kwargs):
    """A tqdm bar showing `unit`/s; disabled with `--quiet` or when stderr is not a terminal."""
    disable = QUIET or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)


def notice(message: str) -> None:
    """One line on stderr for something the user should know that is not an error (a damaged
    cache entry recomputed, a skipped image); shown even with `--quiet`."""
    tqdm.write(f"rcnn: {message}", file=sys.stderr)
