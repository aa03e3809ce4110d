"""``loss.grounding`` from the CLI on real GoToLocal demonstrations: pretraining and training both read it, log it,
and the supervised matching loss falls."""

from __future__ import annotations

import json

from vlafoundry.cli.main import main

SMALL = ["--model.memory", "none", "--model.d_model", "32", "--model.d_ff", "64", "--model.num_layers", "1",
         "--model.grounding", "attributes", "--train.threads", "1", "--train.progress", "false"]


def _rows(path, split="train"):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("split") == split]


def test_grounding_loss_trains_from_the_cli(tmp_path, capsys):
    from vlafoundry.data.generate import generate_dataset

    generate_dataset("babyai/GoToLocal", 12, tmp_path / "data", workers=1, seed=0, progress=False)
    data = ["--data.path", str(tmp_path / "data"), "--data.episodes", "12"]
    rc = main(["pretrain", "--preset", "babyai-gotolocal", "--out", str(tmp_path / "pre"), *data, *SMALL,
               "--pretrain.loss.grounding", "1.0", "--pretrain.steps", "30", "--pretrain.batch_size", "8",
               "--pretrain.lr", "3e-3", "--pretrain.warmup_steps", "1", "--train.log_every", "1"])
    assert rc == 0
    rows = _rows(tmp_path / "pre" / "metrics.jsonl")
    assert all("grounding" in r for r in rows)
    assert rows[-1]["grounding"] < 0.5 * rows[0]["grounding"]
    rc = main(["train", "--preset", "babyai-gotolocal", "--out", str(tmp_path / "run"), *data, *SMALL,
               "--init-from", str(tmp_path / "pre"), "--loss.grounding", "0.5", "--train.steps", "2",
               "--train.batch_size", "8", "--train.warmup_steps", "1", "--train.eval_every", "2",
               "--train.checkpoint_every", "2", "--train.log_every", "1"])
    assert rc == 0
    assert "grounding" in _rows(tmp_path / "run" / "metrics.jsonl")[-1]
    # without the grounding the option is refused with the key named
    rc = main(["train", "--preset", "babyai-gotolocal", "--out", str(tmp_path / "bad"), *data,
               "--loss.grounding", "1.0", "--train.steps", "1", "--train.threads", "1"])
    assert rc != 0
    assert "loss.grounding > 0 needs model.grounding=attributes" in capsys.readouterr().err
