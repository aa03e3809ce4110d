"""bench/bosslevel_gpu.sh end to end on CPU with a tiny model: every stage runs and the outputs reassemble into a
checkpoint that loads (the script is meant for a short GPU lease, where a failure costs the lease)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bosslevel_gpu.sh"
TINY = ("--model.d_model 32 --model.d_ff 64 --model.num_heads 2 --model.num_layers 1 --model.vision_layers 1 "
        "--model.text_layers 1 --train.batch_size 4 --pretrain.batch_size 4")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32", reason="needs bash")
def test_bosslevel_gpu_script_on_cpu(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, OUT=str(out), WORK=str(work), EPISODES="12", BUDGET_S="90", PRETRAIN_S="1",
               RESERVE_S="5", SMOKE_PRE_STEPS="1", SMOKE_TRAIN_STEPS="2", MIN_PRE_STEPS="2", MIN_STEPS="3",
               CUDA_TESTS="0", EVAL_DEVICE="cpu", EVAL_EPISODES="2", EVAL_ENVS="2", EVAL_S="600",
               GEN_WORKERS="1", OVERRIDES=TINY, VF=f"{sys.executable} -m vlafoundry", OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    log = (out / "log.txt").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("generating 64 smoke episodes", r"smoke OK \(precision auto\)", "wrote 12 episodes",
                  r"pretraining \d+ steps", r"\] training (\d+) steps", "eval: +babyai/BossLevel +success", "done; total"):
        assert re.search(stage, log), f"missing stage {stage!r} in:\n{log}"
    steps = int(re.search(r"\] training (\d+) steps", log).group(1))
    assert steps >= 3  # MIN_STEPS, or more at the measured rate

    # the returned files rebuild a checkpoint that evaluates
    dest = tmp_path / "back"
    with tarfile.open(out / "records.tgz") as tar:
        tar.extractall(dest, filter="data")
    assert json.loads((dest / "train" / "summary.json").read_text())["steps"] == steps
    ckpt = sorted((dest / "train" / "checkpoints").glob("step_*"))[-1]
    parts = sorted(out.glob("model.safetensors.part*"))
    assert parts
    (ckpt / "model.safetensors").write_bytes(b"".join(p.read_bytes() for p in parts))
    from vlafoundry.train import load_run

    policy, cfg, _ = load_run(dest / "train", device="cpu")
    assert cfg.data.env == "babyai/BossLevel" and cfg.model.d_model == 32
    assert sum(p.numel() for p in policy.parameters()) > 0
