"""bench/babyai_sample_efficiency.py without training: finished sizes are read back, --compare curves drawn."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

FIELDS = ["level", "demos", "train_seed", "episodes", "successes", "success_rate", "ci_low", "ci_high"]


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("babyai_sample_efficiency.py")


def _write(path: Path, rows: list[tuple[int, int, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for demos, seed, rate in rows:
            w.writerow({"level": "GoToLocal", "demos": demos, "train_seed": seed, "episodes": 1000,
                        "successes": int(rate * 1000), "success_rate": rate, "ci_low": rate - 0.02,
                        "ci_high": min(1.0, rate + 0.01)})  # fmt: skip


def test_finished_sizes_are_not_retrained_and_compare_curves_are_drawn(bench, tmp_path, monkeypatch, capsys):
    out, other = tmp_path / "colour", tmp_path / "plain" / "GoToLocal.csv"
    _write(out / "GoToLocal.csv", [(1000, 0, 0.98), (2000, 0, 0.99)])
    _write(other, [(1000, 0, 0.88), (1000, 1, 0.86), (5000, 0, 0.991)])
    monkeypatch.setattr(bench, "run_one", lambda *a, **k: pytest.fail("a finished size was trained again"))
    rc = bench.main(["GoToLocal", "--demos", "1000,2000", "--out", str(out), "--compare", f"{other}=no augmentation"])
    assert rc == 0 and (out / "GoToLocal.png").stat().st_size > 10_000
    assert [r["demos"] for r in bench.read_rows(out / "GoToLocal.csv")] == [1000, 2000]  # the CSV is untouched
    label, rows = bench.parse_compare([f"{other}=no augmentation"])[0]
    assert label == "no augmentation" and [r["success_rate"] for r in rows] == [0.88, 0.86, 0.991]
    assert bench.parse_compare([str(other)])[0][0] == "plain"  # default label: the CSV's folder
    assert bench.main(["GoToLocal", "--demos", "1000", "--out", str(out), "--compare", str(tmp_path / "no.csv")]) == 2
    assert "--compare: no such CSV" in capsys.readouterr().err
