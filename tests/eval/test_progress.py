"""vlafoundry.progress: plain, bounded lines when the output is not a terminal; tqdm on a terminal."""

from __future__ import annotations

import io

import pytest

from vlafoundry.progress import LineProgress, progress, progress_mode


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_many_updates_give_few_plain_lines(monkeypatch):
    monkeypatch.delenv("VLAFOUNDRY_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress(10_000, "closed loop", "ep", stream=out)
    assert isinstance(bar, LineProgress)
    with bar:
        for _ in range(10_000):
            bar.update(1)
    text = out.getvalue()
    assert "\r" not in text
    assert 1 <= len(text.splitlines()) <= 11  # a fast loop: at most one line per 10% (and per second) + the end
    assert text.splitlines()[-1].startswith("closed loop: 10000/10000 ep (100%)")


def test_a_line_every_tenth_when_updates_are_slow_enough():
    out, clock = io.StringIO(), FakeClock()
    with LineProgress(10_000, "closed loop", "ep", stream=out, clock=clock) as bar:
        for _ in range(10_000):
            clock.t += 0.002  # 20 s in all: 2 s per 10%
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10%, 20%, ..., 100%; close adds nothing new
    assert lines[0] == "closed loop: 1000/10000 ep (10%), 0:02 elapsed, 500.0 ep/s, eta 0:18"
    assert lines[-1].startswith("closed loop: 10000/10000 ep (100%)")
    fast, clock = io.StringIO(), FakeClock()
    with LineProgress(100, "x", stream=fast, clock=clock) as bar:
        for _ in range(100):  # 0.5 s in all: fraction lines are held back (min_interval_s = 1)
            clock.t += 0.005
            bar.update(1)
    assert len(fast.getvalue().splitlines()) == 1  # only the final line


def test_time_based_lines_and_final_line():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(1_000_000, "offline pass", "samples", stream=out, every_s=30, clock=clock)
    for _ in range(100):  # 0.01% per update, 10 s apart: a line every 3rd update by time alone
        clock.t += 10
        bar.update(1)
    assert len(out.getvalue().splitlines()) == 33
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 34 and lines[-1].startswith("offline pass: 100/1000000 samples (0%)")
    bar.close()  # idempotent
    assert len(out.getvalue().splitlines()) == 34


def test_unknown_total_postfix_and_write():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(None, "generate", "ep", stream=out, clock=clock)
    bar.set_postfix(loss="0.1234")
    for _ in range(50):
        bar.update(2)
    assert out.getvalue() == ""  # no total, no time passed: nothing until close
    bar.write("expert failed on seed 3")
    clock.t = 4.0
    bar.close()
    assert out.getvalue().splitlines() == ["expert failed on seed 3",
                                           "generate: 100 ep, 0:04 elapsed, 25.0 ep/s, loss=0.1234"]  # fmt: skip


def test_modes(monkeypatch):
    monkeypatch.delenv("VLAFOUNDRY_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines" and progress_mode(Tty()) == "bar"
    bar = progress(5, "x", stream=Tty())
    from tqdm.std import tqdm

    assert isinstance(bar, tqdm)
    bar.close()
    quiet = io.StringIO()
    with progress(5, "x", enabled=False, stream=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == "" and bar.n == 5
    bar.write("a message")  # messages still go out, as tqdm.write does for a disabled bar
    assert quiet.getvalue() == "a message\n"
    monkeypatch.setenv("VLAFOUNDRY_PROGRESS", "lines")
    assert isinstance(progress(5, stream=Tty()), LineProgress)
    monkeypatch.setenv("VLAFOUNDRY_PROGRESS", "loud")
    with pytest.raises(ValueError, match=r"VLAFOUNDRY_PROGRESS: expected one of \['bar', 'lines', 'off'\], got 'loud'"):
        progress_mode()


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"every_fraction: expected a number in \(0, 1\], got 0"):
        LineProgress(10, every_fraction=0)
    with pytest.raises(ValueError, match="every_s: expected a number > 0, got -1"):
        LineProgress(10, every_s=-1)
    with pytest.raises(ValueError, match="min_interval_s: expected a number >= 0, got -1"):
        LineProgress(10, min_interval_s=-1)
