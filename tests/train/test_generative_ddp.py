"""The generative heads under torch.distributed (two CPU processes, gloo): they train through the same DDP path as
the other heads, every rank draws its own noise and time samples, and the run finishes in sync (same step count,
checkpoint written once, a finite loss)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--model.d_model", "32", "--model.d_ff", "64", "--model.num_layers", "1", "--model.gen_hidden", "32",
        "--model.gen_layers", "1", "--train.steps", "3", "--train.batch_size", "16", "--train.warmup_steps", "1",
        "--train.eval_every", "100", "--train.checkpoint_every", "100", "--train.threads", "1",
        "--train.progress", "false"]


@pytest.fixture(scope="module")
def detour_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlafoundry.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("ddp_gen") / "data"
    generate_dataset("point/detour", 16, root, workers=1, seed=0, progress=False)
    return root


@pytest.mark.parametrize("head", ["flow", "diffusion"])
def test_generative_head_trains_with_two_ddp_processes(detour_data, tmp_path, head):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vlafoundry",
           "train", "--preset", "bench/heads_detour.yaml", "--data", str(detour_data), "--data.episodes", "16",
           "--out", str(out), "--model.head", head, *TINY]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    assert math.isfinite(summary["last"]["loss"])
    from vlafoundry.models import load_policy

    policy = load_policy(next(p for p in (out / "checkpoints").iterdir() if p.is_dir()))
    assert policy.head_kind == head
