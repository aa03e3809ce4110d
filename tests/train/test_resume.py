"""Resuming a run on real generated BabyAI data: config changes checked, resume announced, metrics once per step,
corrupt latest checkpoints named with the intact one to use, and the dataset's own metadata in the config."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from vlafoundry.cli.main import main
from vlafoundry.data import generate_dataset
from vlafoundry.train import checkpoint as ckpt
from vlafoundry.train.trainer import Trainer, load_run


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _train(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["train", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ------------------------------------------------------------------------------------------ defect 1
def test_resume_refuses_changed_architecture_and_applies_other_changes(gotolocal_root, tiny_args, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["--data", str(gotolocal_root), "--out", str(run), *tiny_args, "--train.steps", "4"]
    assert _train(base, capsys)[0] == 0
    before = _digest(run)

    rc, out, err = _train([*base, "--model.d_ff", "128", "--train.steps", "8"], capsys)
    assert rc == 2, (out, err)
    assert "cannot resume" in err and "model.d_ff: 64 -> 128" in err, err
    assert "train.steps" not in err.split("model.d_ff")[1].split(";")[0]  # only the refused keys are listed
    assert "--no-resume" in err and "--out" in err, err
    assert _digest(run) == before, "a refused resume must not touch the run"

    # data the checkpoint was trained on is refused as well
    rc, _, err = _train([*base, "--data.val_fraction", "0.2"], capsys)
    assert rc == 2 and "data.val_fraction: 0.1 -> 0.2" in err, err
    assert _digest(run) == before

    # optimisation keys are applied, and said so
    rc, out, err = _train([*base, "--train.steps", "8", "--train.lr", "0.002"], capsys)
    assert rc == 0, err
    assert "resumed from step 4" in out and "train.lr: 0.001 -> 0.002" in out and "train.steps: 4 -> 8" in out, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 8 and summary["resumed_from_step"] == 4
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.002 and saved["model"]["d_ff"] == 64
    _, cfg, _ = load_run(run)  # the final checkpoint loads
    assert cfg.train.steps == 8 and cfg.model.d_ff == 64


def test_resume_applies_changed_weight_decay_to_the_optimizer(gotolocal_root, tiny_cfg, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg("--train.steps", "4"), run, dataset_root=gotolocal_root).fit()
    tr = Trainer(tiny_cfg("--train.steps", "8", "--train.weight_decay", "0.5", "--train.betas", "[0.8, 0.99]"), run,
                 dataset_root=gotolocal_root)
    assert tr.resumed_from_step == 4
    assert [g["weight_decay"] for g in tr.optimizer.param_groups] == [0.5, 0.0]
    assert all(tuple(g["betas"]) == (0.8, 0.99) for g in tr.optimizer.param_groups)


# ------------------------------------------------------------------------------------------ defect 2
def test_interrupted_then_resumed_run_logs_each_step_once(gotolocal_root, tiny_cfg, tmp_path, capsys):
    """Killed at step 7 (rows for step 6 written, last checkpoint at 4): after the resume every step is logged
    once, the resume is announced and recorded."""
    run = tmp_path / "run"
    cfg = ("--train.steps", "8")  # log every 2, validate and checkpoint every 4
    tr = Trainer(tiny_cfg(*cfg), run, dataset_root=gotolocal_root)
    assert tr.resumed_from_step is None
    real_step = tr.optimizer.step

    def step_then_die(*args, **kwargs):
        if tr.step == 6:  # the 7th optimiser step
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args, **kwargs)

    tr.optimizer.step = step_then_die
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 6 and ckpt.resolve_checkpoint(run).name == "step_0000004"
    capsys.readouterr()

    summary = Trainer(tiny_cfg(*cfg), run, dataset_root=gotolocal_root).fit()
    assert "resumed from step 4" in capsys.readouterr().out
    assert summary["resumed_from_step"] == 4
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == 4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for split, expected in (("train", [2, 4, 6, 8]), ("val", [4, 8])):
        assert [r["step"] for r in rows if r["split"] == split] == expected, rows


# ------------------------------------------------------------------------------------------ defect 3
@pytest.fixture()
def corrupt_run(gotolocal_root, tiny_args, tmp_path, capsys) -> tuple[Path, Path, Path]:
    """A finished 8-step run (checkpoints at 4 and 8) whose latest weights file is truncated."""
    run = tmp_path / "run"
    rc, _, err = _train(["--data", str(gotolocal_root), "--out", str(run), *tiny_args, "--train.steps", "8"], capsys)
    assert rc == 0, err
    older, latest = run / "checkpoints" / "step_0000004", run / "checkpoints" / "step_0000008"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    return run, older, latest


def test_train_on_corrupt_latest_checkpoint_names_the_intact_older_one(corrupt_run, gotolocal_root, tiny_args,
                                                                         capsys):
    run, older, latest = corrupt_run
    before = _digest(run)
    args = ["--data", str(gotolocal_root), "--out", str(run), *tiny_args, "--train.steps", "12"]
    rc, _, err = _train(args, capsys)
    assert rc == 2
    assert f"checkpoint {latest} is corrupt" in err and "not a valid safetensors file" in err, err
    assert f"the newest intact older checkpoint is {older}" in err, err
    assert "to resume from step_0000004" in err and "--no-resume" in err, err
    assert _digest(run) == before
    # doing what the message says works
    shutil.move(str(latest), str(run / "corrupt_step_0000008"))
    rc, out, err = _train(args, capsys)
    assert rc == 0 and "resumed from step 4" in out, err


def test_eval_on_corrupt_latest_checkpoint_names_the_intact_older_one(corrupt_run, capsys):
    run, older, latest = corrupt_run
    before = _digest(run)
    rc = main(["eval", str(run), "--episodes", "1", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"checkpoint {latest} is corrupt" in err and f"the newest intact older checkpoint is {older}" in err, err
    assert _digest(run) == before
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        ckpt.load_checkpoint(run)
    assert info.value.corrupt == latest and info.value.fallback == older


def test_corrupt_json_and_no_intact_older_checkpoint(corrupt_run):
    run, older, _ = corrupt_run
    (older / "state.json").write_text("{not json")
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"there is no intact older checkpoint in") as info:
        ckpt.load_checkpoint(run)
    assert info.value.fallback is None
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"step_0000004 is corrupt: .*state\.json: invalid JSON"):
        ckpt.load_checkpoint(older)


# ------------------------------------------------------------------------------------------ defect 5
@pytest.fixture(scope="module")
def open_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("open") / "ds"
    generate_dataset("babyai/Open", 4, root, workers=1, seed=7, progress=False)
    return root


def test_dataset_metadata_overrides_preset_values(open_root, tiny_args, tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = _train(["--preset", "babyai-gotolocal", "--data", str(open_root), "--out", str(run), *tiny_args,
                           "--train.steps", "2"], capsys)
    assert rc == 0, err
    assert "data.env 'babyai/GoToLocal' -> 'babyai/Open'" in out and "data.episodes 5000 -> 4" in out, out
    assert "data.seed 0 -> 7" in out, out
    for data in (yaml.safe_load((run / "config.yaml").read_text())["data"],
                 json.loads((ckpt.resolve_checkpoint(run) / "config.json").read_text())["data"]):
        assert (data["env"], data["episodes"], data["seed"], data["image"]) == ("babyai/Open", 4, 7, "symbolic")
    _, cfg, _ = load_run(run)  # what `vlafoundry eval RUN` reads: env and training seeds
    assert (cfg.data.env, cfg.data.seed, cfg.data.episodes) == ("babyai/Open", 7, 4)


@pytest.mark.parametrize("key,value,held", [("env", "babyai/GoToLocal", "'babyai/Open'"), ("episodes", "4000", "4"),
                                            ("seed", "0", "7")])
def test_explicit_data_key_contradicting_dataset_is_an_error(open_root, tiny_args, tmp_path, capsys, key, value,
                                                              held):
    run = tmp_path / "run"
    rc, _, err = _train(["--data", str(open_root), "--out", str(run), *tiny_args, f"--data.{key}", value,
                         "--train.steps", "1"], capsys)
    assert rc == 2
    assert f"data.{key}: the dataset {open_root} holds {held}" in err and f"from --data.{key}" in err, err
    assert not run.exists()


def test_explicit_data_key_agreeing_with_dataset_is_fine(open_root, tiny_args, tmp_path, capsys):
    rc, out, err = _train(["--data", str(open_root), "--out", str(tmp_path / "run"), *tiny_args,
                           "--data.env", "babyai/Open", "--train.steps", "1"], capsys)
    assert rc == 0, err
    assert "data.env" not in out


def test_resume_with_init_from_keeps_the_init_checkpoints_architecture(gotolocal_root, tiny_args, tmp_path, capsys):
    """`train --init-from X` takes X's architecture; rerunning the same command resumes (no false refusal)."""
    pre = tmp_path / "pre"
    rc, _, err = _train(["--data", str(gotolocal_root), "--out", str(pre), *tiny_args, "--model.d_ff", "96",
                         "--train.steps", "2"], capsys)
    assert rc == 0, err
    run = tmp_path / "run"
    args = ["--data", str(gotolocal_root), "--out", str(run), "--init-from", str(pre), *tiny_args]
    assert _train([*args, "--train.steps", "4"], capsys)[0] == 0
    rc, out, err = _train([*args, "--train.steps", "6"], capsys)
    assert rc == 0 and "resumed from step 4" in out, err
    assert load_run(run)[1].model.d_ff == 96
