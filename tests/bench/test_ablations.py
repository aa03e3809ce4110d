"""End to end: bench/ablations.py on a tiny generated GoToLocal dataset with a tiny model and a few steps."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import pytest

from vlafoundry.data import generate_dataset

TINY = [
    "--override", "model.d_model=32", "--override", "model.d_ff=64", "--override", "model.num_heads=2",
    "--override", "model.num_layers=1", "--override", "model.embed_dim=16", "--override", "train.batch_size=32",
    "--override", "pretrain.batch_size=32", "--override", "train.warmup_steps=1",
    "--override", "pretrain.warmup_steps=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def ablations(load_bench):
    return load_bench("ablations.py")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ablations") / "gotolocal-20"
    generate_dataset("babyai/GoToLocal", 20, root, workers=1, seed=0, progress=False)
    return root


def _run(ablations, capsys, dataset: Path, out: Path, *extra: str) -> tuple[int, dict, str]:
    argv = ["--preset", "babyai-gotolocal", "--data", str(dataset), "--seeds", "0", "--steps", "3",
            "--pretrain-steps", "2", "--episodes", "4", "--out", str(out), *TINY, *extra]  # fmt: skip
    rc = ablations.main(argv)
    text = capsys.readouterr().out
    return rc, json.loads(text.strip().splitlines()[-1]), text


def _run_err(ablations, capsys, dataset: Path, out: Path, *extra: str) -> tuple[int, str]:
    """(exit code, stderr) of a run expected to stop early."""
    argv = ["--preset", "babyai-gotolocal", "--data", str(dataset), "--seeds", "0", "--steps", "3",
            "--pretrain-steps", "2", "--episodes", "4", "--out", str(out), *TINY, *extra]  # fmt: skip
    capsys.readouterr()
    rc = ablations.main(argv)
    return rc, capsys.readouterr().err


def test_ablations_end_to_end(ablations, capsys, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, summary, text = _run(ablations, capsys, dataset, out, "--variants", "film,no_pretrain,moe")
    assert rc == 0
    assert "train.steps overridden to 3 for every variant" in text

    with open(out / "ablations.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"baseline", "film", "no_pretrain", "moe"}
    base = rows["baseline"]
    assert base["status"] == "ok" and base["seed"] == "0" and base["episodes"] == "4"
    assert base["pretrain"] == "True" and base["pretrain_steps"] == "2" and base["train_steps"] == "3"
    assert rows["no_pretrain"]["pretrain"] == "False" and rows["no_pretrain"]["pretrain_steps"] == "0"
    assert float(base["total_train_wall_s"]) > 0 and float(base["s_per_step"]) > 0
    for m in ("image", "instruction", "state"):  # every modality removed at test time
        assert 0.0 <= float(base[f"no_{m}_success_rate"]) <= 1.0
    # film is the preset's own fusion: the same run as the baseline, not trained twice
    assert rows["film"]["same_run_as"] == "baseline" and rows["film"]["success_rate"] == base["success_rate"]
    assert not (out / "runs" / "film-s0").exists()
    assert (out / "runs" / "baseline-s0" / "pretrain").is_dir()
    assert not (out / "runs" / "no_pretrain-s0" / "pretrain").exists()
    # MoE has nothing to replace in FiLM fusion with vision_layers=0: reported, not silently run as the baseline
    assert rows["moe"]["status"].startswith("invalid: model.moe=true adds no expert layer")
    assert "moe" in summary["invalid"]

    md = (out / "ablations.md").read_text()
    assert "| baseline = film |" in md and "| no_pretrain |" in md and "not run: invalid" in md
    assert [s["variant"] for s in summary["summary"]] == ["baseline = film", "no_pretrain"]
    lo, hi = summary["summary"][0]["pooled_ci"]
    assert 0.0 <= lo <= summary["summary"][0]["success_mean"] <= hi <= 1.0

    # a rerun trains nothing and reads the finished runs
    rc, again, text = _run(ablations, capsys, dataset, out, "--variants", "film,no_pretrain,moe")
    assert rc == 0 and "finished earlier" in text and "behaviour cloning, 3 steps" not in text
    assert again["summary"] == summary["summary"]

    # a run recorded before a config setting existed (the setting at its default) is the same run; another value is not
    ident = out / "runs" / "baseline-s0" / "variant.json"
    record = json.loads(ident.read_text())
    del record["config"]["data"]["augment"]
    ident.write_text(json.dumps(record))
    rc, _, text = _run(ablations, capsys, dataset, out, "--variants", "film")
    assert rc == 0 and "[baseline seed 0] finished earlier" in text
    record["config"]["data"]["augment"] = "colour"
    ident.write_text(json.dumps(record))
    rc, err = _run_err(ablations, capsys, dataset, out, "--variants", "film")
    assert rc == 2 and "holds a run with different settings (data.augment)" in err
    del record["config"]["data"]["augment"]
    ident.write_text(json.dumps(record))

    # --table-only: the finished runs go into the table, an unfinished (variant, seed) is listed, nothing trains
    rc, table, text = _run(ablations, capsys, dataset, out, "--variants", "film,no_pretrain", "--seeds", "0,1",
                           "--table-only")  # fmt: skip
    assert rc == 0 and "[no_pretrain seed 1] not finished: left out of the table" in text
    assert "behaviour cloning, 3 steps" not in text and not (out / "runs" / "no_pretrain-s1").exists()
    assert [s["per_seed"] for s in table["summary"]] == [s["per_seed"] for s in summary["summary"]]
    with open(out / "ablations.csv") as f:
        status = {(r["variant"], r["seed"]): r["status"] for r in csv.DictReader(f)}
    assert status[("no_pretrain", "0")] == "ok" and status[("no_pretrain", "1")] == "not finished"


def _baseline_only(ablations, capsys, dataset: Path, out: Path, override: str) -> tuple[dict, dict]:
    """Run the baseline alone with one override: (the final JSON summary, its one CSV row)."""
    rc, summary, _ = _run(ablations, capsys, dataset, out, "--variants", "baseline", "--override", override)
    assert rc == 0
    with open(out / "ablations.csv") as f:
        (row,) = list(csv.DictReader(f))
    return summary, row


def test_ablations_absent_modality(ablations, capsys, dataset: Path, tmp_path: Path) -> None:
    """A model without an image input (as on Meta-World) gets '-' in the 'no image' columns."""
    out = tmp_path / "out"
    summary, row = _baseline_only(ablations, capsys, dataset, out, "model.vision=none")
    assert row["no_image_success_rate"] == "-" and row["no_state_success_rate"] != "-"
    assert summary["summary"][0]["no_image"] is None
    md_row = next(line for line in (out / "ablations.md").read_text().splitlines() if line.startswith("| baseline"))
    assert md_row.split(" | ")[7] == "-"


def test_ablations_with_restarts(ablations, capsys, dataset: Path, tmp_path: Path) -> None:
    """A preset with train.restarts trains every cycle in each run (3 steps, then a 2-step cycle)."""
    out = tmp_path / "out"
    _, row = _baseline_only(ablations, capsys, dataset, out, "train.restarts=[2]")
    assert row["status"] == "ok" and int(row["train_steps"]) == 5
    run = out / "runs" / "baseline-s0" / "train"
    assert (run / "cycles" / "cycle_1" / "checkpoints").is_dir()
    assert [c["step"] for c in json.loads((run / "summary.json").read_text())["cycles"]] == [3, 2]


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks are POSIX")
def test_run_lock_serialises_processes_on_one_run(ablations, capsys, tmp_path: Path) -> None:
    """A second worker on the same (variant, seed) waits for the first instead of training the run twice."""
    import threading

    run = tmp_path / "runs" / "baseline-s0"
    events: list[str] = []
    held = threading.Event()

    def first() -> None:
        with ablations.run_lock(run, "[first]"):
            events.append("first in")
            held.set()
            time.sleep(0.3)
            events.append("first out")

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(5)
    with ablations.run_lock(run, "[second]"):  # a separate open file description: blocks like another process
        events.append("second in")
    t.join()
    assert events == ["first in", "first out", "second in"]
    assert "[second] another process is working on" in capsys.readouterr().out
    with ablations.run_lock(run, "[third]"):  # free again: no waiting message
        pass
    assert "waiting" not in capsys.readouterr().out
