"""``vlafoundry run``: one episode of a tiny trained policy with a free-text instruction, a GIF, a one-line outcome,
and the words its word-level tokenizer cannot represent reported (not silently mangled)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlafoundry.cli.main import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlafoundry.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("run_cli")
    generate_dataset("babyai/GoToLocal", 12, root / "data", workers=1, seed=0, progress=False)
    rc = main(["train", "--preset", "babyai-gotolocal", "--out", str(root / "run"), "--data.path", str(root / "data"),
               "--data.episodes", "12", "--model.memory", "none", "--model.d_model", "32", "--model.d_ff", "64",
               "--model.num_layers", "1", "--train.steps", "2", "--train.batch_size", "8", "--train.warmup_steps",
               "1", "--train.eval_every", "2", "--train.checkpoint_every", "2", "--train.threads", "1"])
    assert rc == 0
    return root / "run"


def test_run_writes_gif_and_one_line_outcome(tiny_run, tmp_path, capsys):
    gif = tmp_path / "ep.gif"
    rc = main(["run", str(tiny_run), "--instruction", "go to the red ball", "--seed", "5", "--gif", str(gif),
               "--max-steps", "6"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and gif.is_file() and gif.stat().st_size > 0
    assert out[0].startswith("all 5 words known to this policy's tokenizer (word-level")
    assert len(out) == 2 and ("success in" in out[1] or "failure in" in out[1])
    assert "babyai/GoToLocal seed 5" in out[1] and "told \u201cgo to the red ball\u201d" in out[1]
    import imageio.v3 as iio

    frames = iio.imread(gif, index=None)
    steps = int(out[1].split(" in ")[1].split(" steps")[0])
    assert 1 <= frames.shape[0] <= steps + 1 and steps <= 6  # identical consecutive frames may be merged


def test_run_reports_unknown_words(tiny_run, tmp_path, capsys):
    rc = main(["run", str(tiny_run), "--instruction", "Kindly stroll to the crimson ball, please!", "--gif",
               str(tmp_path / "x.gif"), "--max-steps", "2"])
    first = capsys.readouterr().out.splitlines()[0]
    assert rc == 0
    assert first.startswith("4 of 7 words unknown to this policy's tokenizer (word-level")
    assert first.endswith("seen as [UNK]: kindly, stroll, crimson, please")


def test_run_refuses_bad_input(tiny_run, capsys):
    assert main(["run", str(tiny_run), "--instruction", "  "]) == 2
    assert "--instruction: expected non-empty text, got '  '" in capsys.readouterr().err
    assert main(["run", str(tiny_run) + "-missing", "--instruction", "go"]) == 2
    assert "CHECKPOINT: no such file or directory" in capsys.readouterr().err
    assert main(["run", str(tiny_run), "--instruction", "go", "--max-steps", "0"]) == 2
    assert "--max-steps: expected an integer >= 1, got 0" in capsys.readouterr().err
