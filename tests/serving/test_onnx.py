"""ONNX export of the acting path: equal to PyTorch in onnxruntime (memory carried), refusals named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serving_helpers import make_policy, observation  # tests/serving/serving_helpers.py

pytest.importorskip("onnx", reason="ONNX export tests need the onnx extra (onnx)")
pytest.importorskip("onnxruntime", reason="ONNX export tests need the onnx extra (onnxruntime)")


@pytest.mark.parametrize("kw", [{}, {"memory": None, "history": 2, "chunk": 3}, {"grounding": "attributes"}])
def test_export_matches_pytorch(tmp_path, kw):
    from vlafoundry.serving.onnx_export import export_onnx, heldout_observations

    p = make_policy(**kw)
    obs = heldout_observations(p, "babyai/GoToLocal", rows=4, steps=4)
    rng = np.random.default_rng(0)
    # other batch sizes and instruction lengths through the same graph (dynamic axes)
    r = export_onnx(p, tmp_path / "p.onnx", [*obs, observation(3, rng), observation(1, rng)])
    assert r.max_abs_diff < 1e-4 and r.action_agreement == 1.0 and r.checked_rows == 4 * 4 + 4
    meta = json.loads(r.sidecar.read_text())
    assert meta["inputs"] == r.inputs and meta["processor"]["tokenizer"] is not None
    assert ("memory_in" in r.inputs) == (p.memory is not None) and "lang_ids" in r.inputs


def test_export_refuses_pretrained_language():
    from vlafoundry.serving.onnx_export import ExportError, check_exportable

    p = make_policy()
    p.cfg.language = "pretrained"  # the check reads the config only
    with pytest.raises(ExportError, match="model.language: expected 'scratch' or 'none'.*MiniLM"):
        check_exportable(p)

    class Other:
        type = "onehot_mlp"

    with pytest.raises(ExportError, match="model.type"):
        check_exportable(Other())


def test_cli_export(tiny_run, tmp_path, capsys):
    from vlafoundry.cli.main import main

    out = tmp_path / "policy.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(out), "--check-rows", "3", "--check-steps", "3"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert "max abs difference" in text and "memory_in" in text and "agree on 100.0% of rows" in text


def test_onnx_backend_acts_like_pytorch_and_serves(tmp_path, served):
    """The onnxruntime policy (GRU state per row) picks the same actions as the PyTorch policy, in-process and
    behind the server with concurrent per-client state."""
    pytest.importorskip("websockets", reason="serving needs the serve extra (websockets)")
    pytest.importorskip("msgpack", reason="serving needs the serve extra (msgpack)")
    from vlafoundry.serving.client import PolicyClient
    from vlafoundry.serving.onnx_export import export_onnx, heldout_observations
    from vlafoundry.serving.onnx_runtime import OnnxPolicy

    p = make_policy()
    obs = heldout_observations(p, "babyai/GoToLocal", rows=4, steps=6)
    export_onnx(p, tmp_path / "p.onnx", obs[:2])
    onnx_policy = OnnxPolicy(make_policy(), tmp_path / "p.onnx")
    ref = make_policy()
    ref.reset()
    onnx_policy.reset()
    expected = []
    for t, o in enumerate(obs):
        expected.append(ref.select_action(o))
        np.testing.assert_array_equal(onnx_policy.select_action(o), expected[-1])
        if t == 2:
            ref.reset([1])
            onnx_policy.reset([1])
    srv = served(OnnxPolicy(make_policy(), tmp_path / "p.onnx"))
    with PolicyClient(srv.url, timeout=20) as c:
        assert c.metadata["batching"] == "rows" and not c.stateless
        c.reset()
        for t, o in enumerate(obs):
            np.testing.assert_array_equal(c.select_action(o), expected[t])
            if t == 2:
                c.reset([1])


def test_onnx_backend_refuses_windows(tmp_path):
    from vlafoundry.serving.onnx_export import ExportError, export_onnx
    from vlafoundry.serving.onnx_runtime import OnnxPolicy

    p = make_policy(memory=None, history=2)
    export_onnx(p, tmp_path / "p.onnx", [observation(2, np.random.default_rng(0))])
    with pytest.raises(ExportError, match="model.history/model.chunk: the onnx backend expected 1 and 1, got 2"):
        OnnxPolicy(p, tmp_path / "p.onnx")


def test_export_refuses_generative_heads():
    from vlafoundry.serving.onnx_export import ExportError, check_exportable

    p = make_policy()
    p.head_kind = "flow"  # the check reads the head kind and config only
    with pytest.raises(ExportError, match=r"model.head: expected 'discrete', 'continuous' or 'binned'.*got 'flow'"):
        check_exportable(p)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_export_of_a_pixel_policy_with_cell_tokens(tmp_path, mode):
    """The cell head and its embedded predictions are part of the acting graph with ``model.cell_tokens``."""
    import torch
    from serving_helpers import INSTRUCTIONS

    from vlafoundry.models import PolicyConfig, PolicySpec, VLAPolicy
    from vlafoundry.nn.language import TextTokenizer
    from vlafoundry.serving.onnx_export import export_onnx

    cfg = PolicyConfig(vision="patch", patch_size=8, cell_labels="minigrid", cell_tokens=mode, d_model=32,
                       num_heads=2, d_ff=64, num_layers=1, vision_layers=0, embed_dim=16)
    spec = PolicySpec(env="babyai/PutNextLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4,
                      image_shape=[56, 56, 3], state_mean=[0.0] * 4, state_std=[1.0] * 4)
    torch.manual_seed(0)
    p = VLAPolicy(cfg, spec, TextTokenizer.train(INSTRUCTIONS * 4, kind="word")).eval()
    rng = np.random.default_rng(0)
    obs = [{"image": rng.integers(0, 256, (n, 56, 56, 3), dtype=np.uint8),
            "state": rng.normal(size=(n, 4)).astype(np.float32),
            "instruction": [INSTRUCTIONS[int(i)] for i in rng.integers(0, 4, size=n)]} for n in (4, 3, 1)]
    r = export_onnx(p, tmp_path / "p.onnx", obs)
    assert r.max_abs_diff < 1e-4 and r.action_agreement == 1.0 and r.checked_rows == 8


def test_export_of_a_pixel_policy_with_position_tokens(tmp_path):
    """``model.position_tokens add``: the position head reads the frame and its prediction joins the state token,
    inside the exported acting graph (Meta-World-like continuous actions, 4-D proprioception)."""
    import torch
    from serving_helpers import INSTRUCTIONS

    from vlafoundry.models import PolicyConfig, PolicySpec, VLAPolicy
    from vlafoundry.nn.language import TextTokenizer
    from vlafoundry.serving.onnx_export import export_onnx

    cfg = PolicyConfig(vision="patch", vision_stem="conv", patch_size=8, position_labels="metaworld",
                       position_tokens="add", head="continuous", state_fourier=2, d_model=32, num_heads=2, d_ff=64,
                       num_layers=1, vision_layers=1, embed_dim=16)
    spec = PolicySpec(env="metaworld/reach", action_type="continuous", action_dim=4, action_low=[-1.0] * 4,
                      action_high=[1.0] * 4, state_dim=4, image_shape=[32, 32, 3], state_mean=[0.0] * 4,
                      state_std=[1.0] * 4)
    torch.manual_seed(0)
    p = VLAPolicy(cfg, spec, TextTokenizer.train(INSTRUCTIONS * 4, kind="word")).eval()
    assert p.position_proj is not None
    rng = np.random.default_rng(0)
    obs = [{"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "state": rng.normal(size=(n, 4)).astype(np.float32),
            "instruction": [INSTRUCTIONS[int(i)] for i in rng.integers(0, 4, size=n)]} for n in (4, 3, 1)]
    r = export_onnx(p, tmp_path / "p.onnx", obs)
    assert r.max_abs_diff < 1e-4 and r.checked_rows == 8
