"""Progress of every loop over a dataset: a tqdm bar on a terminal, plain lines in a log.

On a terminal (stderr is a TTY) `progress` is a tqdm bar with items per second. Off a
terminal (``make demo | tee log``, CI, ``nohup``) a bar's carriage returns would be noise, so
it prints plain lines to stderr instead: one when a stage starts, one every `LOG_INTERVAL`
seconds with done/total, the rate and the bar's postfix (e.g. the loss), and one when it
ends. A stage over within `LOG_DEFER` seconds gets its end line only. ``rcnn --quiet``
(`QUIET`) silences both.

Messages that are not progress (a damaged cache entry recomputed, a skipped image, what was
chosen from the data) go through `logging`, one logger per module (``rcnn.cache``,
``rcnn.detectors.base``, ...): a library user routes or silences them there (warnings reach
stderr by Python's default; the rest needs a handler). The `rcnn` command installs
`log_to_stderr`: every message one ``rcnn: ...`` line on stderr, shown even with ``--quiet``.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

QUIET = False  # set by `rcnn --quiet`
LOG_INTERVAL = 30.0  # seconds between progress lines off a terminal
LOG_DEFER = 1.0  # a stage's start line waits this long: a quicker stage gets its end line only


def progress(iterable=None, desc: str = "", total=None, unit: str = "img", **kwargs):
    """A progress report over `iterable` (or updated by hand with ``update(n)``): a tqdm bar
    on a terminal, `LogProgress` lines off one, nothing with `QUIET`."""
    if not QUIET and not sys.stderr.isatty():
        return LogProgress(iterable, desc=desc, total=total, unit=unit, initial=kwargs.get("initial", 0))
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=QUIET, dynamic_ncols=True, **kwargs)


class LogProgress:
    """The part of tqdm's interface the project uses (iteration, ``update``, ``set_postfix``,
    ``close``, context manager), reported as plain lines on stderr for log files."""

    def __init__(
        self,
        iterable=None,
        desc: str = "",
        total=None,
        unit: str = "img",
        initial: int = 0,
        interval: float | None = None,
        defer: float | None = None,
    ):
        self.iterable, self.desc, self.unit = iterable, desc or "progress", unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.initial = total, initial, initial
        self.interval = LOG_INTERVAL if interval is None else interval
        self.defer = LOG_DEFER if defer is None else defer
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = self.started = False
        self._start_line()

    def _start_line(self) -> None:
        if not self.started and time.monotonic() - self.start >= self.defer:
            self.started = True
            of = f", {self.total} {self.unit} to do" if self.total is not None else ""
            self._line(f"started{of}" + (f" (resuming at {self.initial})" if self.initial else ""))

    def _line(self, text: str) -> None:
        print(f"rcnn: {self.desc}: {text}", file=sys.stderr, flush=True)

    def _rate(self, now: float) -> str:
        seconds = max(now - self.start, 1e-9)
        return f"{(self.n - self.initial) / seconds:.3g} {self.unit}/s"

    def update(self, n: int = 1) -> None:
        self.n += n
        self._start_line()
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
            share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
            self._line(f"{done} {self.unit}{share}, {self._rate(now)}" + (f", {self.postfix}" if self.postfix else ""))

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        self._line(
            f"done, {self.n} {self.unit} in {now - self.start:.1f} s ({self._rate(now)})"
            + (f", {self.postfix}" if self.postfix else "")
        )

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class StderrLines(logging.Handler):
    """Each record as one line ``rcnn: message`` on stderr (through tqdm: a progress bar on
    the terminal is redrawn below it, not torn)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(f"rcnn: {record.getMessage()}", file=sys.stderr)
        except Exception:  # noqa: BLE001  logging's rule: a handler never raises
            self.handleError(record)


def log_to_stderr(level: int = logging.INFO) -> None:
    """Show the ``rcnn`` loggers' messages from `level` up as the `rcnn` command does
    (`StderrLines`); calling it again changes nothing but the level."""
    logger = logging.getLogger("rcnn")
    if not any(isinstance(h, StderrLines) for h in logger.handlers):
        logger.addHandler(StderrLines())
    logger.setLevel(level)
