"""Training killed at any point resumes from its last complete checkpoint and ends with the same weights.

Default suite: crashes simulated in-process (an exception mid-step or mid-checkpoint-write, plus the debris a
``kill -9`` leaves behind). Slow suite (``python -m pytest -m slow tests/reliability``): real ``SIGKILL`` of
``python -m vlafoundry train`` at random moments, inside a checkpoint write, and between a checkpoint's rename
and the ``latest`` update; the same command is rerun and its final weights compared bit for bit (``torch.equal``)
with an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import minari
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vlafoundry.data.cache as cache
import vlafoundry.data.generate as gen
import vlafoundry.data.shards as shards
from vlafoundry.data import generate_dataset, verify_dataset
from vlafoundry.train import checkpoint as ckpt
from vlafoundry.train.trainer import Trainer

STEPS = 40


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.resolve_checkpoint(run) / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different}"


@pytest.fixture(scope="module")
def reference(rel_dataset: Path, tiny_cfg, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Weights of an uninterrupted in-process run of the tiny config."""
    run = tmp_path_factory.mktemp("ref") / "run"
    Trainer(tiny_cfg(), run, dataset_root=rel_dataset).fit()
    return final_weights(run)


# ------------------------------------------------------------------------------------------ default suite
def test_crash_mid_step_then_resume_equals_uninterrupted(rel_dataset, tiny_cfg, reference, tmp_path):
    """An exception between backward and the optimiser step of step 13 (last checkpoint: step 10), plus the
    debris of a killed writer (a ``.tmp-`` directory and a step directory without ``COMPLETE``)."""
    run = tmp_path / "run"
    tr = Trainer(tiny_cfg(), run, dataset_root=rel_dataset)
    real_step = tr.optimizer.step

    def step_then_die(*args, **kwargs):
        if tr.step == 13:
            raise KeyboardInterrupt("simulated kill mid-step")
        return real_step(*args, **kwargs)

    tr.optimizer.step = step_then_die
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    ck = run / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_0000010"
    junk_tmp = ck / "step_0000015.tmp-999999"
    junk_tmp.mkdir()
    (junk_tmp / "model.safetensors").write_bytes(b"\0" * 64)
    half = ck / "step_0000020"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"garbage")  # no COMPLETE marker
    resumed = Trainer(tiny_cfg(), run, dataset_root=rel_dataset)
    assert resumed.step == 10, "resume must start from the last complete checkpoint"
    summary = resumed.fit()
    assert summary["step"] == STEPS
    assert_same_weights(final_weights(run), reference)
    assert not list(ck.glob("*.tmp-*")), "stale temporary checkpoint directories are pruned"


def test_crash_mid_checkpoint_write_keeps_previous_and_resumes(rel_dataset, tiny_cfg, reference, tmp_path,
                                                               monkeypatch):
    """The third checkpoint (step 15) dies after its tensors are written but before its JSON files."""
    run = tmp_path / "run"
    real_write_json = ckpt.write_json_atomic

    def die_in_step_15(path, obj):
        if ".tmp-" in path.parent.name and path.parent.name.startswith("step_0000015"):
            raise KeyboardInterrupt("simulated kill inside a checkpoint write")
        return real_write_json(path, obj)

    monkeypatch.setattr(ckpt, "write_json_atomic", die_in_step_15)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(), run, dataset_root=rel_dataset).fit()
    monkeypatch.undo()
    ck = run / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_0000010"
    assert not (ck / "step_0000015").exists()
    assert ckpt.resolve_checkpoint(run).name == "step_0000010"
    Trainer(tiny_cfg(), run, dataset_root=rel_dataset).fit()
    assert_same_weights(final_weights(run), reference)


# ------------------------------------------------------------------------------------------ disk full
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_checkpoint_keeps_previous_and_resumes(rel_dataset, tiny_cfg, reference, tmp_path,
                                                                monkeypatch):
    """ENOSPC while the step-15 checkpoint writes its tensors: a clear error, step 10 intact and resumable."""
    run = tmp_path / "run"
    tr = Trainer(tiny_cfg(), run, dataset_root=rel_dataset)
    tr.fit(stop_after=10)
    ck = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in (ck / "step_0000010").iterdir()}
    monkeypatch.setattr(ckpt, "save_tensors", _disk_full)
    with pytest.raises(ckpt.CheckpointError, match=r"could not write checkpoint .*step_0000015: No space left on "
                                                   r"device; the previous checkpoint is untouched"):
        tr.fit()
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (ck / "step_0000010").iterdir()} == before
    assert (ck / "latest").read_text().strip() == "step_0000010"
    assert not (ck / "step_0000015").exists() and not list(ck.glob("*.tmp-*"))
    Trainer(tiny_cfg(), run, dataset_root=rel_dataset).fit()
    assert_same_weights(final_weights(run), reference)


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small_ref") / "ds"
    generate_dataset("babyai/GoToLocal", 6, root, shard_size=2, progress=False)
    return root


def _fail_on_call(n: int, real):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            _disk_full()
        return real(*args, **kwargs)

    return wrapper


DISK_FULL_POINTS = {
    "shard-write": lambda mp: mp.setattr(shards.np, "savez", _fail_on_call(2, np.savez)),  # 2nd of 3 shards
    "cache-write": lambda mp: mp.setattr(cache.np, "save", _fail_on_call(3, np.save)),
    "minari-hdf5": lambda mp: mp.setattr(minari, "create_dataset_from_buffers", _disk_full),
    "metadata-json": lambda mp: mp.setattr(
        gen, "write_json_atomic",
        lambda path, obj, real=gen.write_json_atomic: _disk_full() if Path(path).name == "vlafoundry.json"
        else real(path, obj)),
}


@pytest.mark.parametrize("where", list(DISK_FULL_POINTS))
def test_disk_full_during_generation_then_rerun_completes(where, small_reference, digest, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    DISK_FULL_POINTS[where](monkeypatch)
    with pytest.raises(OSError, match=r"writing the dataset in .* failed \(No space left on device\).*rerun the "
                                      r"same command to resume") as info:
        generate_dataset("babyai/GoToLocal", 6, out, shard_size=2, progress=False)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert not (out / "vlafoundry.json").exists()
    result = generate_dataset("babyai/GoToLocal", 6, out, shard_size=2, progress=False)
    assert result.shards_reused >= 1
    assert verify_dataset(out) == []
    ref = {k: v for k, v in digest(small_reference).items() if not k.endswith("source_stat.json")}
    got = {k: v for k, v in digest(out).items() if not k.endswith("source_stat.json")}
    assert got == ref, "the resumed dataset must be byte-identical to an uninterrupted one"


# ------------------------------------------------------------------------------------------ slow: real kill -9
SLOW_WRITE_SHIM = """
import sys, time
import vlafoundry.train.checkpoint as c
from vlafoundry.cli.main import main
mode = sys.argv[1]
if mode == "slow-write":          # widen the window inside a checkpoint write
    real = c.write_json_atomic
    def slow(path, obj, **kw):
        time.sleep(0.15)
        return real(path, obj, **kw)
    c.write_json_atomic = slow
elif mode == "slow-latest":       # widen the window between a checkpoint's rename and the latest update
    real_text = c.write_atomic_text
    def slow_text(path, text):
        time.sleep(0.4)
        return real_text(path, text)
    c.write_atomic_text = slow_text
raise SystemExit(main(sys.argv[2:]))
"""


def _popen(argv: list[str], env: dict[str, str], shim_mode: str | None = None) -> subprocess.Popen:
    if shim_mode is None:
        cmd = [sys.executable, "-m", "vlafoundry", *argv]
    else:
        cmd = [sys.executable, "-c", SLOW_WRITE_SHIM, shim_mode, *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0, poll: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before the kill point:\n{err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            _kill(proc)
            pytest.fail("kill point never reached")
        time.sleep(poll)


def _latest(ck: Path) -> str | None:
    try:
        return (ck / "latest").read_text().strip() or None
    except OSError:
        return None


def _partial_tmp(ck: Path) -> bool:
    """A checkpoint being written: a .tmp- dir holding the weights but not yet the COMPLETE marker."""
    try:
        return any((d / "model.safetensors").exists() and not (d / ckpt.MARKER).exists()
                   for d in ck.glob("step_*.tmp-*"))
    except OSError:
        return False


def _renamed_not_latest(ck: Path) -> bool:
    """A complete step directory newer than the one ``latest`` names (killed before ``latest`` moved)."""
    latest = _latest(ck)
    done = sorted(d.name for d in ck.glob("step_???????") if ckpt.is_complete(d))
    return latest is not None and bool(done) and done[-1] > latest


@pytest.fixture(scope="module")
def train_argv(rel_dataset: Path, tiny_overrides: list[str]):
    def make(run: Path) -> list[str]:
        return ["train", "--data", str(rel_dataset), "--out", str(run), *tiny_overrides]

    return make


@pytest.fixture(scope="module")
def cli_reference(train_argv, cli_env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("cli_ref") / "run"
    proc = subprocess.run([sys.executable, "-m", "vlafoundry", *train_argv(run)],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_weights(run)


KILL_CASES = [("random", 1), ("random", 2), ("random", 3), ("mid-write", 0), ("before-latest", 0)]


@pytest.mark.slow
@pytest.mark.parametrize("mode,seed", KILL_CASES, ids=[f"{m}-{s}" for m, s in KILL_CASES])
def test_kill_9_then_rerun_equals_uninterrupted(mode, seed, train_argv, cli_env, cli_reference, tmp_path):
    run = tmp_path / "run"
    ck = run / "checkpoints"
    argv = train_argv(run)
    env = cli_env()
    if mode == "random":
        proc = _popen(argv, env)
        _wait_for(lambda: _latest(ck) is not None, proc)  # training is under way (first checkpoint exists)
        time.sleep(random.Random(seed).uniform(0.0, 0.5))
        if proc.poll() is not None:
            pytest.fail("the run finished before the random kill; lower the delay range")
    elif mode == "mid-write":
        proc = _popen(argv, env, "slow-write")
        _wait_for(lambda: _latest(ck) is not None and _partial_tmp(ck), proc)
    else:
        proc = _popen(argv, env, "slow-latest")
        _wait_for(lambda: _renamed_not_latest(ck), proc)
    _kill(proc)
    killed_at = _latest(ck)
    leftovers = sorted(p.name for p in ck.iterdir())
    print(f"[{mode}-{seed}] SIGKILL with latest={killed_at}, checkpoints/ held {leftovers}")
    if mode == "mid-write":
        assert any(".tmp-" in n for n in leftovers), leftovers
    rerun = subprocess.run([sys.executable, "-m", "vlafoundry", *argv], capture_output=True, text=True, env=env,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'"step": {STEPS}' in rerun.stdout
    assert_same_weights(final_weights(run), cli_reference)
    assert not list(ck.glob("*.tmp-*")), f"killed at {killed_at}; left {leftovers}"
