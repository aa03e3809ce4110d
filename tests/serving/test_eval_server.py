"""`vlafoundry eval RUN --server URL`: the same episodes, actions and results as evaluating in-process."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("msgpack", reason="serving tests need the serve extra (msgpack)")
pytest.importorskip("websockets", reason="serving tests need the serve extra (websockets)")


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
    assert remote["served_by"]["batching"] == "rows" and remote["served_by"]["action_selection"] == "sample"


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


def test_cli_serve_onnx_backend_subprocess(tiny_run, tmp_path):
    """`vlafoundry serve RUN --backend onnx --port 0` in its own process: it prints its URL, answers /health and
    an act request, and stops on SIGINT."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    import numpy as np

    pytest.importorskip("onnxruntime", reason="the onnx backend needs onnxruntime")
    from vlafoundry.serving.client import PolicyClient

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vlafoundry", "serve", str(tiny_run), "--port", "0", "--backend",
                             "onnx"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = None
        for _ in range(50):
            line = proc.stdout.readline()
            m = re.search(r"on (ws://127\.0\.0\.1:\d+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the server did not print its address"
        port = url.rsplit(":", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.read() == b"ok\n"
        with PolicyClient(url, timeout=20) as c:
            assert c.metadata["batching"] == "rows"
            obs = {"image": np.zeros((2, 7, 7, 3), np.uint8), "state": np.zeros((2, 4), np.float32),
                   "instruction": ["go to the red ball"] * 2}
            assert c.select_action(obs).shape == (2,)
    finally:
        proc.send_signal(signal.SIGINT)
        try:  # it stops in ~1 s; the margin is for a loaded machine
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            pytest.fail("the server did not stop within 90 s of SIGINT")
