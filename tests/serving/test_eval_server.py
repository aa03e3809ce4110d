"""`vlafoundry eval RUN --server URL`: the same episodes, actions and results as evaluating in-process."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("msgpack", reason="serving tests need the serve extra (msgpack)")
pytest.importorskip("websockets", reason="serving tests need the serve extra (websockets)")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny gotolocal-preset policy (GRU memory, sampled actions) trained for a few steps on 12 demonstrations."""
    from vlafoundry.data.generate import generate_dataset
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import run_phase

    tmp = tmp_path_factory.mktemp("served")
    generate_dataset("babyai/GoToLocal", 12, tmp / "ds", workers=1, progress=False)
    cfg = load_config("babyai-gotolocal", [
        "--model.d_model", "32", "--model.d_ff", "64", "--model.num_heads", "2", "--model.num_layers", "1",
        "--model.embed_dim", "16", "--train.batch_size", "8", "--train.steps", "4", "--train.warmup_steps", "1",
        "--train.checkpoint_every", "4", "--train.eval_every", "4", "--train.log_every", "2",
        "--train.progress", "false", "--train.threads", "1", "--data.val_fraction", "0.2",
        "--data.path", str(tmp / "ds"),
    ])  # fmt: skip
    run = tmp / "run"
    run_phase(cfg, run)
    return run


def test_eval_through_server_equals_in_process(tiny_run, tmp_path, monkeypatch):
    from vlafoundry.cli.main import main
    from vlafoundry.serving.server import PolicyServer, ServerConfig
    from vlafoundry.train import load_run

    monkeypatch.setenv("VLAFOUNDRY_TEST_KEY", "k")
    common = ["eval", str(tiny_run), "--episodes", "6", "--num-envs", "4", "--workers", "0", "--gifs", "0",
              "--no-offline"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    policy, cfg, _ = load_run(tiny_run)
    srv = PolicyServer(policy, ServerConfig(port=0, api_key="k"), env=cfg.data.env).start_background()
    try:
        assert main([*common, "--out", str(tmp_path / "remote"), "--server", srv.url,
                     "--api-key-env", "VLAFOUNDRY_TEST_KEY"]) == 0
    finally:
        srv.stop()
    local = json.loads((tmp_path / "local" / "eval.json").read_text())
    remote = json.loads((tmp_path / "remote" / "eval.json").read_text())
    assert local["action_selection"]["mode"] == "sample"  # sampled actions, GRU memory: the hard case
    key = [(e["seed"], e["success"], e["length"], e["return"]) for e in local["episodes"]]
    assert key == [(e["seed"], e["success"], e["length"], e["return"]) for e in remote["episodes"]]
    assert local["rows"] == remote["rows"] and local["subgroups"] == remote["subgroups"]


def test_evaluate_policy_through_client_same_actions(tiny_run):
    """Action by action: the rollout records (every action of every episode) are identical."""
    from vlafoundry.eval.rollout import evaluate_policy
    from vlafoundry.serving.client import PolicyClient
    from vlafoundry.serving.server import PolicyServer, ServerConfig
    from vlafoundry.train import load_run

    policy, _, _ = load_run(tiny_run)
    local = evaluate_policy(policy, "babyai/GoToLocal", episodes=5, num_envs=3, max_steps=20)
    served, _, _ = load_run(tiny_run)
    srv = PolicyServer(served, ServerConfig(port=0)).start_background()
    try:
        with PolicyClient(srv.url) as client:
            remote = evaluate_policy(client, "babyai/GoToLocal", episodes=5, num_envs=3, max_steps=20)
    finally:
        srv.stop()
    assert [e["actions"] for e in local.episodes] == [e["actions"] for e in remote.episodes]
    assert sum(len(e["actions"]) for e in local.episodes) > 5


def test_eval_server_refuses_options_the_server_owns(tiny_run, tmp_path, capsys):
    from vlafoundry.cli.main import main

    rc = main(["eval", str(tiny_run), "--server", "ws://127.0.0.1:1", "--action-selection", "greedy",
               "--out", str(tmp_path)])
    assert rc == 2 and "--action-selection: not available with --server" in capsys.readouterr().err
