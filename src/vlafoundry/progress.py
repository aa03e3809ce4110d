"""Progress you can see in a terminal and read in a log.

:func:`progress` returns a bar with tqdm's small interface (``update``, ``set_postfix``, ``set_description``,
``write``, ``close``, ``n``, context manager):

* on a terminal (the stream's ``isatty()``) it is a tqdm bar;
* elsewhere (a log file, a pipe, CI) it is :class:`LineProgress`: one plain line (no carriage return) each time
  another ``every_fraction`` of the total is done (default 10%; but not within ``min_interval_s`` = 1 s of the
  previous line, so a loop of a few seconds writes little) or ``every_s`` seconds have passed since the last line
  (default 30 s), whichever comes first, and one final line on ``close``. A 10,000-step loop thus writes at most
  a dozen lines instead of thousands of ``\\r`` updates.

``VLAFOUNDRY_PROGRESS=bar|lines|off`` forces a mode (e.g. ``lines`` on a terminal, ``off`` in tests).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

__all__ = ["LineProgress", "ProgressBar", "progress", "progress_mode"]

ENV_VAR = "VLAFOUNDRY_PROGRESS"
_MODES = ("bar", "lines", "off")


class ProgressBar(Protocol):
    """What callers may use: the subset of tqdm shared by :class:`LineProgress`."""

    n: int

    def update(self, k: int = 1) -> None: ...

    def set_postfix(self, **values: Any) -> None: ...

    def set_description(self, desc: str) -> None: ...

    def write(self, message: str, file: TextIO | None = None) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> ProgressBar: ...

    def __exit__(self, *exc: object) -> None: ...


def _duration(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; ``3725`` -> ``"1:02:05"``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class LineProgress:
    """Plain-line progress for non-interactive output (see the module docstring).

    Args:
        total: expected number of units (None or 0: unknown; lines then come only every ``every_s`` seconds).
        desc: what is running (``"closed loop"``, ``"train"``); starts every line.
        unit: the unit counted (``"ep"``, ``"step"``, ``"samples"``).
        initial: units already done (resumed work); not counted in the rate.
        stream: where lines go (default ``sys.stderr`` at creation time).
        every_fraction: a line each time this fraction of ``total`` more is done (0 < f <= 1).
        every_s: a line when this many seconds passed since the last one, at the next update (> 0).
        min_interval_s: no fraction line within this many seconds of the previous line (>= 0).
        disable: write nothing (``update`` still counts).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        stream: TextIO | None = None,
        every_fraction: float = 0.1,
        every_s: float = 30.0,
        min_interval_s: float = 1.0,
        disable: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < every_fraction <= 1:
            raise ValueError(f"every_fraction: expected a number in (0, 1], got {every_fraction}")
        if not every_s > 0:
            raise ValueError(f"every_s: expected a number > 0, got {every_s}")
        self.total = int(total) if total else None
        self.desc, self.unit = desc, unit
        self.n = self.initial = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.disable = disable
        if not min_interval_s >= 0:
            raise ValueError(f"min_interval_s: expected a number >= 0, got {min_interval_s}")
        self.every_s, self.min_interval_s = float(every_s), float(min_interval_s)
        self._clock = clock
        self._t0 = self._last_t = clock()
        self._step = max(1, math.ceil(every_fraction * self.total)) if self.total else None
        self._next = self._after(self.n)  # the count at which the next fraction line is due
        self._postfix = ""
        self._printed_n: int | None = None  # count of the last line written
        self._closed = False

    def _after(self, n: int) -> int | None:
        return None if self._step is None else (n // self._step + 1) * self._step

    def _line(self) -> str:
        elapsed = self._clock() - self._t0
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            pct = 100.0 * self.n / self.total
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            body = (f"{self.n}/{self.total} {self.unit} ({pct:.0f}%), {_duration(elapsed)} elapsed, "
                    f"{rate:,.1f} {self.unit}/s, eta {_duration(max(left, 0.0))}")  # fmt: skip
        else:
            body = f"{self.n} {self.unit}, {_duration(elapsed)} elapsed, {rate:,.1f} {self.unit}/s"
        return head + body + (f", {self._postfix}" if self._postfix else "")

    def _emit(self) -> None:
        self._last_t = self._clock()
        self._printed_n = self.n
        if not self.disable:
            print(self._line(), file=self.stream, flush=True)

    def update(self, k: int = 1) -> None:
        """Count ``k`` more units; writes a line when a fraction step or ``every_s`` seconds are reached."""
        if self._closed:
            return
        self.n += int(k)
        since = self._clock() - self._last_t
        due_fraction = self._next is not None and self.n >= self._next and since >= self.min_interval_s
        if due_fraction:
            self._next = self._after(self.n)
        if due_fraction or since >= self.every_s:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        """Shown at the end of the following lines (``loss=0.12, sps=400``)."""
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def write(self, message: str, file: TextIO | None = None) -> None:
        """A message line (tqdm.write's counterpart: written even when the bar itself is disabled)."""
        print(message, file=file if file is not None else self.stream, flush=True)

    def close(self) -> None:
        """The final line (unless the last line already showed this count)."""
        if self._closed:
            return
        self._closed = True
        if self._printed_n != self.n:
            self._emit()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_mode(stream: TextIO | None = None) -> str:
    """``"bar"`` on a terminal, ``"lines"`` elsewhere, unless ``$VLAFOUNDRY_PROGRESS`` names a mode."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        if forced not in _MODES:
            raise ValueError(f"${ENV_VAR}: expected one of {list(_MODES)}, got {forced!r}")
        return forced
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


def progress(
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    *,
    initial: int = 0,
    enabled: bool = True,
    stream: TextIO | None = None,
    every_fraction: float = 0.1,
    every_s: float = 30.0,
    min_interval_s: float = 1.0,
) -> ProgressBar:
    """A progress bar for ``total`` units: tqdm on a terminal, :class:`LineProgress` otherwise.

    ``enabled=False`` returns a silent counter (nothing is written in any mode).
    """
    stream = stream if stream is not None else sys.stderr
    mode = progress_mode(stream) if enabled else "off"
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial=initial, stream=stream, every_fraction=every_fraction,
                        every_s=every_s, min_interval_s=min_interval_s, disable=mode == "off")  # fmt: skip
