"""``vlafoundry train`` / ``pretrain`` / ``quickstart`` command-line surface: config keys listed, typos named."""

from __future__ import annotations

import re

import pytest

from vlafoundry.cli.main import main
from vlafoundry.config import config_keys
from vlafoundry.train.config import ExperimentConfig


def test_help_mentions_list_keys(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "--list-keys" in capsys.readouterr().out


def test_list_keys_prints_every_key_with_type_and_default(capsys) -> None:
    assert main(["train", "--list-keys"]) == 0
    out = capsys.readouterr().out
    for key, *_ in config_keys(ExperimentConfig):
        assert re.search(rf"^{re.escape(key)}\s", out, re.MULTILINE), key
    # type, default, and the preset's value when it differs (babyai-gotolocal sets train.lr 3e-4? any key works)
    assert re.search(r"^train\.lr\s+float\s+0\.001", out, re.MULTILINE), out
    assert re.search(r"^data\.episodes\s+int\s+1000 -> 5000$", out, re.MULTILINE), out
    assert re.search(r"^model\.modality_dropout\.image\s+float\s+0\.0", out, re.MULTILINE), out


def test_list_keys_of_one_section_and_unknown_section(capsys) -> None:
    assert main(["pretrain", "--list-keys", "eval"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines()[1:] if x.strip()]
    assert lines and all(x.startswith("eval.") for x in lines)
    assert main(["train", "--list-keys", "trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown section 'trian'" in err and "did you mean 'train'" in err


def test_mistyped_option_is_an_unknown_option_with_suggestion(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--outt", "runs/x", "--train.steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown option --outt" in err and "did you mean '--out'" in err, err
    assert "config key" not in err.split("(")[0]
    assert not (tmp_path / "runs").exists()
    assert main(["quickstart", "--no-pretrian"]) == 2
    assert "did you mean '--no-pretrain'" in capsys.readouterr().err


def test_unknown_dotted_key_named_in_full_with_sections(capsys) -> None:
    assert main(["train", "--no.such.key", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'no.such.key'" in err, err
    assert "valid sections: ['data', 'model', 'loss', 'train', 'pretrain', 'eval']" in err, err
    assert main(["train", "--train.stepz", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.stepz'" in err and "did you mean 'train.steps'" in err, err
    assert main(["train", "--model.modality_dropout.imgae", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.modality_dropout.imgae'" in err
    assert "did you mean 'model.modality_dropout.image'" in err, err


def test_quickstart_help_is_plain_text(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["quickstart", "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "babyai-gotolocal-minilm preset" in out and "(--train.steps 500)" in out, out
