"""bench/grounding_probe.py: the matching probe on real GoToLocal frames with a small untrained policy."""

from __future__ import annotations

import pytest

from tests.models.test_policy import babyai_spec, make


def test_probe_counts_trained_and_held_out_frames_and_picks_signs_on_trained_ones(load_bench) -> None:
    from vlafoundry.envs import make_env

    gp = load_bench("grounding_probe.py")
    policy = make(babyai_spec(), fusion="film", vision_layers=0, grounding="attributes")
    env = make_env("babyai/GoToLocal")
    out = gp.probe_policy(policy, env, "babyai/GoToLocal", ["red ball", "green key"], frames=5, seed=10**9)
    rows = out["rows"]
    assert rows["held-out"]["frames"] == 5 and rows["trained"]["frames"] >= 1
    assert all(0.0 <= r["named_object_best"] <= 1.0 for r in rows.values())
    assert len(out["sign"].split(",")) == 2  # one sign per attribute, e.g. "(1, -1)"


def test_probe_refuses_a_policy_without_grounding(load_bench, tmp_path, monkeypatch) -> None:
    gp = load_bench("grounding_probe.py")
    policy = make(babyai_spec(), fusion="film", vision_layers=0)

    class Cfg:
        class model:
            grounding = "none"

    from vlafoundry import train

    monkeypatch.setattr(train, "load_run", lambda run: (policy, Cfg, None))
    with pytest.raises(SystemExit, match="no attribute matching"):
        gp.probe("RUN", 5, 10**9)
