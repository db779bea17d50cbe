"""One progress display for a scoring run: rows safely written (committed shards), rows/s, ETA.

The count comes from the output folder itself (`ShardCounter`), so it is what a rerun would keep:
a row counts once its shard is renamed into place. Where it shows:
- a terminal: one live tqdm bar on stderr;
- a notebook (a Jupyter kernel with ipywidgets): tqdm's widget (`tqdm.auto`);
- anything else (a pipe, a file, a Ray Job's log): a plain line at most every `interval_s`
  seconds and one at the end, so a log of a long run stays a few dozen lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import IO

import pyarrow.parquet as pq

from cluster.data.storage import Location, locate

# Where the display goes when no file is given: sys.stderr, unless a command routes it elsewhere
# (the CLI sends Ray's stderr to a log file and its own display to the terminal: cli/score.py).
DISPLAY: IO[str] | None = None
LINE_INTERVAL_S = 30.0  # not interactive: a status line at most this often
POLL_S = 0.5  # how often the folder is looked at


class ShardCounter:
    """Rows in the committed shards of `parts_dir` (scored parquet rows + errored JSONL lines),
    reading each new shard's footer or lines once."""

    def __init__(self, parts_dir: str | os.PathLike | Location):
        self.parts_dir = locate(parts_dir)
        self.seen: dict[str, int] = {}

    def rows(self) -> int:
        for path in self.parts_dir.glob("part-*.parquet"):
            if path.name not in self.seen:
                try:
                    with path.open() as f:
                        self.seen[path.name] = pq.ParquetFile(f).metadata.num_rows
                except (OSError, ValueError):  # renamed into place a moment ago, or racing: next poll
                    continue
        for path in self.parts_dir.glob("errors-*.jsonl"):
            if path.name not in self.seen:
                try:
                    self.seen[path.name] = sum(1 for line in path.read_text().splitlines() if line.strip())
                except OSError:
                    continue
        return sum(self.seen.values())


def in_notebook() -> bool:
    """A Jupyter kernel (where tqdm.auto draws a widget), not a terminal IPython."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    try:
        return get is not None and get() is not None and "IPKernelApp" in get().config
    except Exception:
        return False


def _plain(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class RunProgress:
    """Watches the output folder from a thread and shows rows written of `total` (this run's rows).
    Use as a context manager; `written` is the last count seen (refreshed on exit)."""

    def __init__(
        self,
        parts_dir: str | os.PathLike | Location,
        total: int,
        *,
        enabled: bool = True,
        file: IO[str] | None = None,
        interactive: bool | None = None,
        interval_s: float = LINE_INTERVAL_S,
    ):
        self.counter = ShardCounter(parts_dir)
        self.total, self.enabled = total, enabled
        self.file = file or DISPLAY or sys.stderr
        self.notebook = in_notebook()
        if interactive is None:
            interactive = self.notebook or bool(getattr(self.file, "isatty", lambda: False)())
        self.interactive, self.interval_s = interactive, interval_s
        self.written = 0
        self.lines = 0  # plain lines printed (not interactive)
        self._bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._last_line = self._started
        self._first: tuple[float, int] | None = None  # when rows were first seen written, and how many

    def __enter__(self) -> RunProgress:
        self.counter.rows()  # what a previous run left is not this run's progress
        self.base = sum(self.counter.seen.values())
        if self.enabled and self.interactive:
            if self.notebook:
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
            self._bar = tqdm(
                total=self.total,
                unit="row",
                desc="rows written",
                dynamic_ncols=True,
                smoothing=0.1,
                file=None if self.notebook else self.file,
            )
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="scoring-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.refresh()
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and exc[0] is None:
            self._line(final=True)

    def refresh(self) -> int:
        self.written = min(self.total, self.counter.rows() - self.base)
        if self._first is None and self.written:
            self._first = (time.monotonic(), self.written)
        if self._bar is not None and self.written > self._bar.n:
            self._bar.update(self.written - self._bar.n)
        return self.written

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            self.refresh()
            if self._bar is None and time.monotonic() - self._last_line >= self.interval_s:
                self._line()

    def _line(self, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self._started
        # the rate since the first rows were written (not since the start: Ray and the models start first)
        first_at, first_rows = self._first or (now, self.written)
        rate = (self.written - first_rows) / (now - first_at) if now > first_at and self.written > first_rows else None
        eta = (self.total - self.written) / rate if rate else None
        speed = f"{rate:.1f} rows/s" if rate else "rows/s: measuring"
        tail = f"in {_plain(elapsed)}" if final else f"{speed}, {_plain(elapsed)} elapsed, ETA {_plain(eta)}"
        print(
            f"rows written: {self.written}/{self.total} ({100 * self.written / max(1, self.total):.0f}%), {tail}",
            file=self.file,
            flush=True,
        )
        self.lines += 1
        self._last_line = time.monotonic()


def shard_rows(parts_dir: str | os.PathLike | Location) -> int:
    """Rows committed in a folder's shards (scored and errored)."""
    return ShardCounter(parts_dir).rows()
