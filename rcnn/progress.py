"""Progress bars (tqdm) for every loop over a dataset: items per second, quiet off a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm

QUIET = False  # set by `rcnn --quiet`


def progress(iterable=None, desc: str = "", total=None, unit: str = "img", **kwargs):
    """A tqdm bar showing `unit`/s; disabled with `--quiet` or when stderr is not a terminal."""
    disable = QUIET or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)
