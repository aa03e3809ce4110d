import os
import pickle

import pytest
import torch
from torch import nn

from vlafoundry.train import checkpoint as ckpt


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_save_load_roundtrip_with_optimizer_and_rng(tmp_path):
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    d = ckpt.save_checkpoint(tmp_path / "ck" / "step_0000001", model_state=m.state_dict(), config={"a": 1},
                             state={"step": 1}, optimizer=opt, extra={"k": "v"})
    expected_rand = torch.rand(3)
    data = ckpt.load_checkpoint(d)
    assert data["config"] == {"a": 1} and data["extra"] == {"k": "v"} and data["state"]["step"] == 1
    for k, v in m.state_dict().items():
        assert torch.equal(data["model"][k], v)
    m2 = _model()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    ckpt.load_optimizer_state(d, opt2, data["state"])
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    ckpt.load_rng_state(d, data["state"])
    assert torch.equal(torch.rand(3), expected_rand)


def test_partial_checkpoint_never_picked(tmp_path):
    m = _model()
    ck = tmp_path / "checkpoints"
    good = ckpt.save_checkpoint(ck / "step_0000001", model_state=m.state_dict(), config={})
    # a newer directory interrupted mid-write: no COMPLETE marker
    bad = ck / "step_0000002"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x00" * 10)
    (ck / "step_0000003.tmp-999").mkdir()
    assert ckpt.resolve_checkpoint(ck) == good
    assert ckpt.resolve_checkpoint(tmp_path) == good


def test_missing_and_misshaped_tensor_named(tmp_path):
    m = _model()
    sd = m.state_dict()
    sd.pop("2.bias")
    with pytest.raises(ckpt.CheckpointError, match=r"missing tensor '2.bias'"):
        ckpt.check_state_dict(m, sd, "x.safetensors")
    sd = m.state_dict()
    sd["0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ckpt.CheckpointError, match=r"'0.weight' expected shape \(8, 4\), found \(3, 3\)"):
        ckpt.check_state_dict(m, sd, "x.safetensors")


def test_pickle_file_refused(tmp_path):
    evil = tmp_path / "model.pt"
    with open(evil, "wb") as f:
        pickle.dump({"w": torch.zeros(2)}, f)
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        ckpt.load_checkpoint(evil)
    # a pickle renamed to model.safetensors is not a valid safetensors file either
    d = tmp_path / "ck"
    d.mkdir()
    os.replace(evil, d / "model.safetensors")
    for name in ("config.json", "state.json", "extra.json", ckpt.MARKER):
        (d / name).write_text("{}")
    with pytest.raises(ckpt.CheckpointError, match="not a valid safetensors"):
        ckpt.load_checkpoint(d)


def test_corrupt_json_named(tmp_path):
    m = _model()
    d = ckpt.save_checkpoint(tmp_path / "step_0000001", model_state=m.state_dict(), config={})
    (d / "config.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="config.json: invalid JSON"):
        ckpt.load_checkpoint(d)


def test_write_failure_keeps_previous(tmp_path, monkeypatch):
    m = _model()
    ck = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(ck / "step_0000001", model_state=m.state_dict(), config={"v": 1})
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "write_json_atomic", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="No space left"):
        ckpt.save_checkpoint(ck / "step_0000002", model_state=m.state_dict(), config={"v": 2})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert not (ck / "step_0000002").exists()
    assert not list(ck.glob("*.tmp-*"))
    assert ckpt.resolve_checkpoint(ck) == first
