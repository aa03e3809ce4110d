"""Corrupt and untrusted inputs fail at once, naming the file, key or tensor, and change nothing on disk.

Covered here (library-level checks of the same faults live next to each feature: tests/data/test_data_verify.py,
tests/train/test_checkpoint.py, tests/train/test_config.py, tests/eval/test_paraphrase.py):

* damaged Minari HDF5 file (bit flips, truncation): ``data verify`` exits 1 naming it; ``DemoDataset`` and
  ``vlafoundry train`` refuse it;
* checkpoints with a missing, unexpected, mis-shaped or wrongly typed tensor, or a truncated weights file, given
  to ``load_run`` / ``vlafoundry train --init-from``;
* configuration errors in a YAML file passed as ``--preset`` and in dotted overrides: exit code 2 naming the key;
* paraphrase files that are not valid UTF-8 JSON;
* pickle-based files (which run code when unpickled) given as checkpoints: refused, never unpickled.
"""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlafoundry.cli.main import main
from vlafoundry.data import DemoDataset
from vlafoundry.train import load_run
from vlafoundry.train.checkpoint import CheckpointError, resolve_checkpoint
from vlafoundry.train.trainer import Trainer

MAIN = "minari/vlafoundry/babyai-gotolocal-v0/data/main_data.hdf5"


# ------------------------------------------------------------------------------------------ damaged HDF5
def _damage(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    if kind == "bitflip-middle":
        data[len(data) // 2] ^= 0x01  # inside the data: h5py reads it without complaint
    elif kind == "bitflip-header":
        data[10] ^= 0xFF  # the HDF5 superblock
    elif kind == "truncate-tail":
        data = data[:-100]
    elif kind == "truncate-half":
        data = data[: len(data) // 2]
    else:
        raise AssertionError(kind)
    path.write_bytes(bytes(data))


DAMAGE = ["bitflip-middle", "bitflip-header", "truncate-tail", "truncate-half"]


@pytest.fixture()
def damaged(request, rel_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(rel_dataset, root)
    _damage(root / MAIN, request.param)
    return root


@pytest.mark.parametrize("damaged", DAMAGE, indirect=True)
def test_data_verify_cli_names_damaged_file(damaged: Path, capsys) -> None:
    assert main(["data", "verify", str(damaged)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {MAIN}:" in err and ("corrupted" in err or "truncated" in err), err


@pytest.mark.parametrize("damaged", DAMAGE, indirect=True)
def test_demodataset_refuses_damaged_file_and_writes_nothing(damaged: Path, digest) -> None:
    before = digest(damaged)
    with pytest.raises(ValueError, match=r"main_data\.hdf5: .*(corrupted|truncated).*the dataset is damaged"):
        DemoDataset(damaged, split="train")
    assert digest(damaged) == before


@pytest.mark.parametrize("damaged", ["bitflip-middle"], indirect=True)
def test_train_cli_refuses_damaged_dataset(damaged: Path, cli, tiny_overrides, digest, tmp_path) -> None:
    before = digest(damaged)
    run = tmp_path / "run"
    res = cli(["train", "--data", str(damaged), "--out", str(run), *tiny_overrides])
    assert res.returncode != 0
    assert "main_data.hdf5" in res.stderr and "the dataset is damaged" in res.stderr, res.stderr[-2000:]
    assert not run.exists() and digest(damaged) == before


# ------------------------------------------------------------------------------------------ bad checkpoints
@pytest.fixture(scope="module")
def trained_run(rel_dataset: Path, tiny_cfg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    Trainer(tiny_cfg("--train.steps", "2"), run, dataset_root=rel_dataset).fit()
    return run


def _edit_weights(tensors: dict[str, torch.Tensor], kind: str) -> tuple[dict[str, torch.Tensor], str]:
    """Damage a state dict; returns it and the regex the error must match."""
    name = "action_head.net.2.weight"
    shape = tuple(tensors[name].shape)
    t = dict(tensors)
    if kind == "missing":
        del t[name]
        return t, rf"missing tensor '{name}' \(shape \({shape[0]}, {shape[1]}\)\)"
    if kind == "misshaped":
        t[name] = torch.zeros(shape[0] + 1, shape[1])
        return t, rf"tensor '{name}' expected shape \({shape[0]}, {shape[1]}\), found \({shape[0] + 1}, {shape[1]}\)"
    if kind == "wrong-dtype":
        t[name] = torch.zeros(shape, dtype=torch.int64)
        return t, rf"tensor '{name}' expected dtype torch.float32, found torch.int64"
    if kind == "unexpected":
        t["action_head.9.weight"] = torch.zeros(2, 2)
        return t, r"unexpected tensor 'action_head.9.weight'"
    raise AssertionError(kind)


CKPT_FAULTS = ["missing", "misshaped", "wrong-dtype", "unexpected", "truncated-file"]


@pytest.fixture()
def bad_checkpoint(request, trained_run: Path, tmp_path: Path) -> tuple[Path, str]:
    src = resolve_checkpoint(trained_run)
    dst = tmp_path / "bad_ckpt"
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    if request.param == "truncated-file":
        weights.write_bytes(weights.read_bytes()[:-64])
        return dst, r"model\.safetensors: not a valid safetensors file"
    tensors, match = _edit_weights(load_file(str(weights)), request.param)
    save_file(tensors, str(weights))
    return dst, r"model\.safetensors: " + match


@pytest.mark.parametrize("bad_checkpoint", CKPT_FAULTS, indirect=True)
def test_load_policy_names_bad_tensor(bad_checkpoint) -> None:
    path, match = bad_checkpoint
    with pytest.raises(CheckpointError, match=match):
        load_run(path)


@pytest.mark.parametrize("bad_checkpoint", CKPT_FAULTS, indirect=True)
def test_train_init_from_bad_checkpoint_changes_nothing(bad_checkpoint, rel_dataset, tiny_overrides, trained_run,
                                                        digest, tmp_path, capsys, monkeypatch) -> None:
    path, match = bad_checkpoint
    existing = tmp_path / "existing_run"
    shutil.copytree(trained_run, existing)
    snapshots = {p: digest(p) for p in (path, existing, rel_dataset)}
    for out, extra in ((tmp_path / "new_run", []), (existing, ["--no-resume"])):
        args = ["train", "--data", str(rel_dataset), "--out", str(out), "--init-from", str(path), *extra,
                *tiny_overrides]
        # the CLI reports one line and exits 2 ...
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and re.search(match, err) and "Traceback" not in err
        # ... and the error underneath is the CheckpointError naming the tensor
        monkeypatch.setenv("VLAFOUNDRY_DEBUG", "1")
        with pytest.raises(CheckpointError, match=match):
            main(args)
        monkeypatch.delenv("VLAFOUNDRY_DEBUG")
    assert not (tmp_path / "new_run").exists()
    assert {p: digest(p) for p in snapshots} == snapshots


# ------------------------------------------------------------------------------------------ bad configs
YAML_CASES = [
    ("trian:\n  steps: 3\n", r"unknown config key 'trian'; valid keys: \["),
    ("train:\n  stepz: 3\n", r"unknown config key 'train\.stepz'"),
    ("train:\n  steps: many\n", r"train\.steps: expected an integer, got 'many' \(str\)"),
    ("train:\n  progress: maybe\n", r"train\.progress: expected a boolean"),
    ("train:\n  lr: -0.1\n", r"train\.lr: expected a learning rate > 0, got -0\.1"),
    ("data:\n  val_fraction: 1.5\n", r"data\.val_fraction: expected a fraction in \[0, 1\), got 1\.5"),
    ("model:\n  d_model: 30\n", r"model\.d_model: expected a multiple of model\.num_heads=4, got 30"),
    ("train: 5\n", r"train: expected a mapping for section TrainConfig"),
    ("train: [unclosed\n", r"bad\.yaml: invalid YAML"),
    ("- a\n- b\n", r"bad\.yaml: expected a mapping at the top level, got list"),
]

OVERRIDE_CASES = [
    (["--train.stepz", "3"], r"unknown config key 'train\.stepz'"),
    (["--train.steps", "abc"], r"train\.steps: expected an integer, got 'abc'"),
    (["--train.steps", "-5"], r"train\.steps: expected an integer >= 1, got -5"),
    (["--model.fusion", "concat"], r"model\.fusion: expected one of \['cross_attention', 'early', 'film', 'late'\]"),
    (["--model.modality_dropout.image", "1.0"], r"model\.modality_dropout\.image: expected a probability in \[0, 1\)"),
    (["--train.precision", "fp8"], r"train\.precision: expected one of \['auto', 'fp32', 'bf16'\], got 'fp8'"),
    (["--train.steps.x", "3"], r"override train\.steps\.x: 'steps' is not a section"),
    (["--train.lr"], r"override --train\.lr has no value"),
]


def _config_error(argv: list[str], trained_run: Path, rel_dataset: Path, digest, tmp_path: Path, capsys) -> str:
    existing = tmp_path / "existing_run"
    shutil.copytree(trained_run, existing)
    before = digest(existing)
    for out in (existing, tmp_path / "new_run"):
        assert main(["train", "--data", str(rel_dataset), "--out", str(out), *argv]) == 2
    assert digest(existing) == before and not (tmp_path / "new_run").exists()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("text,match", YAML_CASES, ids=[f"yaml{i}" for i in range(len(YAML_CASES))])
def test_bad_yaml_preset_exits_2_naming_key(text, match, trained_run, rel_dataset, digest, tmp_path, capsys):
    import re

    preset = tmp_path / "bad.yaml"
    preset.write_text(text)
    err = _config_error(["--preset", str(preset)], trained_run, rel_dataset, digest, tmp_path, capsys)
    assert re.search(match, err), err


@pytest.mark.parametrize("argv,match", OVERRIDE_CASES, ids=[f"override{i}" for i in range(len(OVERRIDE_CASES))])
def test_bad_override_exits_2_naming_key(argv, match, trained_run, rel_dataset, digest, tmp_path, capsys):
    import re

    err = _config_error(argv, trained_run, rel_dataset, digest, tmp_path, capsys)
    assert re.search(match, err), err


def test_config_error_exit_code_from_real_process(cli, rel_dataset, tmp_path):
    res = cli(["train", "--data", str(rel_dataset), "--out", str(tmp_path / "run"), "--train.stepz", "3"])
    assert res.returncode == 2 and "unknown config key 'train.stepz'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ paraphrase files
PARAPHRASE_CASES = [
    (b'{"go to the {color} ball": ["x",]}', r"invalid JSON at line 1, column \d+"),
    (b'{"go to the ball": ["walk to', r"invalid JSON at line 1"),
    (b"", r"invalid JSON at line 1, column 1"),
    (b'{"go to the ball": ["caf\xe9"]}', r"expected UTF-8 JSON text, found byte 0xe9 at offset"),
    (b"\xff\xfe{\x00}\x00", r"expected UTF-8 JSON text, found byte 0xff at offset 0"),
]


@pytest.mark.parametrize("raw,match", PARAPHRASE_CASES, ids=[f"para{i}" for i in range(len(PARAPHRASE_CASES))])
def test_eval_cli_bad_paraphrase_file_named_before_loading_model(raw, match, trained_run, tmp_path, capsys):
    """``vlafoundry eval RUN --paraphrases FILE`` checks FILE before anything else and names it."""
    para = tmp_path / "paraphrases.json"
    para.write_bytes(raw)
    before = sorted(p.name for p in trained_run.iterdir())
    try:
        rc = main(["eval", str(trained_run), "--paraphrases", str(para), "--episodes", "1", "--workers", "0"])
        message = capsys.readouterr().err
        assert rc != 0
    except ValueError as exc:
        message = str(exc)
    assert str(para) in message
    import re

    assert re.search(match, message), message
    assert sorted(p.name for p in trained_run.iterdir()) == before  # no eval.json / report written


# ------------------------------------------------------------------------------------------ untrusted pickles
class _Payload:
    """Unpickling this calls ``open(marker, "w")``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    raw = pickle.dumps({"action_head.net.2.weight": _Payload(marker)})
    files = {}
    files["evil.pt"] = tmp_path / "evil.pt"
    files["evil.pt"].write_bytes(raw)
    files["evil.pth (torch.save zip)"] = tmp_path / "evil.pth"
    torch.save({"w": _Payload(marker)}, files["evil.pth (torch.save zip)"])
    files["evil.safetensors"] = tmp_path / "evil.safetensors"
    files["evil.safetensors"].write_bytes(raw)
    d = tmp_path / "evil_ckpt"
    d.mkdir()
    (d / "model.safetensors").write_bytes(raw)
    for name in ("config.json", "state.json", "extra.json", "COMPLETE"):
        (d / name).write_text("{}")
    files["checkpoint dir with pickled model.safetensors"] = d
    return files


def test_payload_really_runs_code_when_unpickled(tmp_path):
    """Control: the payload used below does create its marker when unpickled (so its absence means something)."""
    marker = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_load_policy_never_unpickles(tmp_path):
    marker = tmp_path / "PWNED"
    for label, path in _evil_files(tmp_path, marker).items():
        with pytest.raises(CheckpointError, match=r"pickle|not a valid safetensors|expected a checkpoint directory"):
            load_run(path)
        assert not marker.exists(), f"{label} was unpickled"


def test_train_cli_init_from_pickle_refused(cli, rel_dataset, tmp_path):
    marker = tmp_path / "PWNED"
    evil = _evil_files(tmp_path, marker)["evil.pt"]
    res = cli(["train", "--data", str(rel_dataset), "--out", str(tmp_path / "run"), "--init-from", str(evil),
               "--train.steps", "1"])
    assert res.returncode != 0
    assert "refusing a pickle-based file" in res.stderr and str(evil) in res.stderr, res.stderr[-2000:]
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_no_unsafe_deserialisation_in_library():
    """Static audit: no torch.load without weights_only=True, no pickle/marshal/shelve/dill, no yaml.load, no
    np.load with allow_pickle=True anywhere in src/vlafoundry."""
    import re

    src = Path(__file__).resolve().parents[2] / "src" / "vlafoundry"
    offenders = []
    patterns = [r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)", r"^\s*import (pickle|marshal|shelve|dill)\b",
                r"^\s*from (pickle|marshal|shelve|dill) import", r"\bpickle\.loads?\(", r"\byaml\.(unsafe_)?load\(",
                r"allow_pickle\s*=\s*True", r"(?<![.\w])(?<!def )eval\(", r"(?<![.\w])(?<!def )exec\("]
    for path in sorted(src.rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(re.search(p, code) for p in patterns):
                offenders.append(f"{path.relative_to(src)}:{i}: {line.strip()}")
    assert not offenders, offenders
