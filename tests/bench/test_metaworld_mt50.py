"""bench/metaworld_mt50.sh: the MT50 pixel pipeline's resumable stages. Fast tests drive it with a fake CLI that
records its arguments (stage order, arguments passed through, a failed stage stops the script and is rerun, finished
stages are skipped); the slow one runs the header's smoke run on real Meta-World frames."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "metaworld_mt50.sh"
STAGES = ["gen", "pretrain", "train", "eval"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _fake_cli(tmp_path: Path, fail_on: str = "") -> Path:
    """An executable standing in for ``vlafoundry``: appends its argv to calls.jsonl, exits 3 on ``fail_on``."""
    fake = tmp_path / "fake_vf.py"
    fake.write_text(
        "import json, sys\n"
        f"with open({str(tmp_path / 'calls.jsonl')!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"sys.exit(3 if sys.argv[1] == {fail_on!r} else 0)\n"
    )
    return fake


def _run(tmp_path: Path, fake: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, VF=f"{sys.executable} {fake}", RUNS=str(tmp_path / "runs"), DATA=str(tmp_path / "data"))
    full.update(env)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=120,
                          check=False)


def _calls(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_stages_run_in_order_stop_on_failure_and_resume(tmp_path):
    runs = tmp_path / "runs"
    # pretraining fails: generation is kept (marker + record), nothing after it runs
    first = _run(tmp_path, _fake_cli(tmp_path, fail_on="pretrain"), "--train.steps", "7", EPISODES="40")
    assert first.returncode != 0
    assert "pretrain failed with exit status 3; rerun the script to resume it" in first.stderr
    assert [c[0] for c in _calls(tmp_path)] == ["data", "pretrain"]
    gen = _calls(tmp_path)[0]
    assert gen[:3] == ["data", "generate", "metaworld/mt50"] and gen[gen.index("--episodes") + 1] == "40"
    assert gen[gen.index("--out") + 1] == str(tmp_path / "data")
    assert (runs / "gen.done").exists() and not (runs / "pretrain.done").exists()
    records = [json.loads(line) for line in (runs / "stages.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["gen"] and records[0]["wall_s"] >= 0 and records[0]["cpu_s"] >= 0

    # the rerun skips generation and runs the rest, overrides to pretrain and train, EVAL_ARGS to eval
    (tmp_path / "calls.jsonl").unlink()
    second = _run(tmp_path, _fake_cli(tmp_path), "--train.steps", "7", EVAL_ARGS="--episodes 1 --max-steps 5")
    assert second.returncode == 0, second.stderr
    assert "gen: done before, skipped" in second.stdout
    pretrain, train, evaluate = _calls(tmp_path)
    assert pretrain[:3] == ["pretrain", "--preset", "metaworld-mt50-pixels"] and pretrain[-2:] == ["--train.steps", "7"]
    assert train[0] == "train" and train[train.index("--init-from") + 1] == str(runs / "pretrain")
    assert train[-2:] == ["--train.steps", "7"]
    assert evaluate[:2] == ["eval", str(runs / "train")] and evaluate[-4:] == ["--episodes", "1", "--max-steps", "5"]
    assert all((runs / f"{s}.done").exists() for s in STAGES)
    assert [json.loads(line)["stage"] for line in (runs / "stages.jsonl").read_text().splitlines()] == STAGES

    # everything done: a third run calls nothing
    (tmp_path / "calls.jsonl").unlink()
    third = _run(tmp_path, _fake_cli(tmp_path))
    assert third.returncode == 0 and _calls(tmp_path) == []
    assert third.stdout.count("done before, skipped") == 4


@pytest.mark.slow
def test_smoke_run_on_real_frames(tmp_path):
    """The header's smoke run: 50 episodes with camera frames, 5 steps of each phase, 1 episode per task."""
    pytest.importorskip("metaworld")
    env = {"VF": f"{sys.executable} -m vlafoundry.cli.main", "EPISODES": "50", "WORKERS": "1",
           "EVAL_ARGS": "--episodes 1 --max-steps 10 --no-offline"}
    full = dict(os.environ, RUNS=str(tmp_path / "runs"), DATA=str(tmp_path / "data"), **env)
    out = subprocess.run(["bash", str(SCRIPT), "--pretrain.steps", "5", "--train.steps", "5",
                          "--pretrain.batch_size", "8", "--train.batch_size", "8"],
                         capture_output=True, text=True, env=full, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "train" / "eval.json").read_text())
    groups = result["task_groups"]
    assert groups["complete"] and [g["group"] for g in groups["groups"]] == ["easy", "medium", "hard", "very hard"]
    assert sum(g["episodes"] for g in groups["groups"]) == 50
