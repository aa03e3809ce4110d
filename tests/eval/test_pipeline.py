"""The evaluation pipeline: options precedence (command line > cfg.eval > defaults) and validation, the three
``eval`` config keys that used to be ignored (seed_start, workers, max_steps), the thin ``vlafoundry eval`` CLI,
the ITM caveat on the terminal, and one offline pass equal to the separate measures."""

from __future__ import annotations

import json
import types

import pytest

from random_policy import RandomPolicy  # tests/random_policy.py
from vlafoundry.eval.options import DEFAULT_EPISODES, EvalOptions, EvalOptionsError, default_workers
from vlafoundry.eval.pipeline import itm_verdict
from vlafoundry.eval.rollout import DEFAULT_SEED_START


def _cfg(**eval_keys):
    return types.SimpleNamespace(eval=types.SimpleNamespace(**eval_keys))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------------------------------------ options


def test_options_precedence_cli_then_config_then_default():
    cfg = _cfg(episodes=7, workers=1, seed_start=5000, max_steps=9)
    from_cfg = EvalOptions.resolve({}, cfg)
    assert (from_cfg.episodes, from_cfg.workers, from_cfg.seed_start, from_cfg.max_steps) == (7, 1, 5000, 9)
    given = {"episodes": 3, "workers": 0, "seed_start": 11, "max_steps": 0, "gifs": None}  # None = not given
    cli = EvalOptions.resolve(given, cfg)
    assert (cli.episodes, cli.workers, cli.seed_start, cli.max_steps, cli.gifs) == (3, 0, 11, 0, 2)
    default = EvalOptions.resolve({}, None)
    assert (default.episodes, default.workers, default.seed_start, default.max_steps) == (
        DEFAULT_EPISODES, default_workers(), DEFAULT_SEED_START, 0)
    assert default.env_max_steps is None and from_cfg.env_max_steps == 9
    # a config without an eval section (or a key) falls through to the defaults
    assert EvalOptions.resolve({}, types.SimpleNamespace()).episodes == DEFAULT_EPISODES
    assert EvalOptions.resolve({}, _cfg(episodes=4)).seed_start == DEFAULT_SEED_START


@pytest.mark.parametrize(("given", "message"), [
    ({"episodes": 0}, "--episodes: expected an integer >= 1, got 0"),
    ({"workers": -1}, "--workers: expected an integer >= 0, got -1"),
    ({"max_steps": -5}, "--max-steps: expected an integer >= 0, got -5"),
    ({"seed_start": 1.5}, "--seed-start: expected an integer >= 0, got 1.5"),
    ({"num_envs": 0}, "--num-envs: expected an integer >= 1 or None, got 0"),
    ({"offline_samples": 0}, "--offline-samples: expected an integer >= 1, got 0"),
    ({"sample_temperature": float("nan")}, "--sample-temperature: expected a number > 0, got nan"),
    ({"action_selection": "argmax"}, "--action-selection: expected one of ['greedy', 'sample'] or None, got 'argmax'"),
])  # fmt: skip
def test_option_validation_names_the_flag_expected_and_got(given, message):
    with pytest.raises(EvalOptionsError) as err:
        EvalOptions.resolve(given, _cfg(episodes=5), label=_flag)
    assert str(err.value) == message


def test_bad_config_value_is_named_by_its_key_and_direct_use_by_field():
    with pytest.raises(EvalOptionsError, match=r"^eval\.max_steps: expected an integer >= 0, got -1$"):
        EvalOptions.resolve({}, _cfg(max_steps=-1))
    EvalOptions.resolve({"max_steps": 4}, _cfg(max_steps=-1))  # the command line wins; the bad key is not read
    with pytest.raises(EvalOptionsError, match=r"^sample_temperature: expected a number > 0, got 0$"):
        EvalOptions(sample_temperature=0)
    with pytest.raises(EvalOptionsError, match=r"^option: expected one of \[.*\], got 'episode'$"):
        EvalOptions.check({"episode": 3})


# ------------------------------------------------------------------------------------------------ ITM verdict


def test_itm_verdict():
    untrained = {"itm_acc": 2 / 3, "itm_acc_matched": 0.0, "itm_acc_negative": 1.0}
    cfg_bc = types.SimpleNamespace(loss=types.SimpleNamespace(itm=0.0),
                                   pretrain=types.SimpleNamespace(loss=types.SimpleNamespace(itm=0.5)))  # fmt: skip
    show, note = itm_verdict(untrained, cfg_bc)
    assert not show and "answers “no match” for every pair" in note and "0.667 in eval.json" in note
    partial = {"itm_acc": 0.7, "itm_acc_matched": 0.6, "itm_acc_negative": 0.8}
    show, note = itm_verdict(partial, cfg_bc)
    assert show and "meaningful only if the checkpoint was trained with an ITM objective" in note
    cfg_itm = types.SimpleNamespace(loss=types.SimpleNamespace(itm=0.5), pretrain=cfg_bc.pretrain)
    assert itm_verdict(partial, cfg_itm) == (True, None)
    assert itm_verdict({"action_acc": 0.5}, cfg_bc) == (False, None)


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def fake_checkpoint(tmp_path, monkeypatch):
    """A run folder whose "checkpoint" loads as a random policy with a real config (no dataset on disk)."""
    import vlafoundry.train.trainer
    from vlafoundry.train.config import load_config

    def make(*overrides: str):
        cfg = load_config("babyai-gotolocal", ["--data.episodes", "50", "--data.path", str(tmp_path / "no-data"),
                                               *overrides])  # fmt: skip
        monkeypatch.setattr(vlafoundry.train.trainer, "load_run", lambda path, device="cpu": (RandomPolicy(), cfg, {}))
        run = tmp_path / "run"
        (run / "checkpoints" / "step_0000010").mkdir(parents=True, exist_ok=True)
        return run

    return make


def _eval(run, out, *extra):
    from vlafoundry.cli.main import main

    rc = main(["eval", str(run), "--gifs", "0", "--out", str(out), *extra])
    return rc, (json.loads((out / "eval.json").read_text()) if rc == 0 else None)


def test_config_eval_keys_change_what_runs(fake_checkpoint, tmp_path):
    run = fake_checkpoint("--eval.episodes", "4", "--eval.seed_start", "5000", "--eval.max_steps", "3",
                          "--eval.workers", "0")  # fmt: skip
    rc, res = _eval(run, tmp_path / "a")
    assert rc == 0
    assert [e["seed"] for e in res["episodes"]] == [5000, 5001, 5002, 5003]  # eval.seed_start
    assert max(e["length"] for e in res["episodes"]) <= 3 and res["config"]["max_steps"] == 3  # eval.max_steps
    assert res["config"]["env_kwargs"]["max_steps"] == 3  # the envs' own cap too
    assert res["config"]["workers"] == 0  # eval.workers
    assert res["options"]["episodes"] == 4
    # the command line wins over each key
    rc, res = _eval(run, tmp_path / "b", "--seed-start", "7000", "--max-steps", "0", "--workers", "1",
                    "--episodes", "2")  # fmt: skip
    assert rc == 0
    assert [e["seed"] for e in res["episodes"]] == [7000, 7001]
    assert max(e["length"] for e in res["episodes"]) > 3 and res["config"]["max_steps"] is None  # env's own 64
    assert res["config"]["workers"] == 1
    assert (tmp_path / "b" / "report.md").is_file() and (tmp_path / "b" / "report.html").is_file()


def test_cli_refuses_bad_values_before_running(fake_checkpoint, tmp_path, capsys):
    run = fake_checkpoint("--eval.episodes", "2", "--eval.workers", "0")
    rc, _ = _eval(run, tmp_path / "c", "--max-steps", "-1")
    assert rc == 2 and "error: --max-steps: expected an integer >= 0, got -1" in capsys.readouterr().err
    rc, _ = _eval(run, tmp_path / "c", "--num-envs", "0")
    assert rc == 2 and "error: --num-envs: expected an integer >= 1 or None, got 0" in capsys.readouterr().err
    rc, _ = _eval(tmp_path / "missing", tmp_path / "c")
    assert rc == 2 and "error: CHECKPOINT: no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_progress_lines_in_a_log(fake_checkpoint, tmp_path, capsys, monkeypatch):
    """Not a terminal: the stages are announced and the rollouts report plain progress lines, no carriage return."""
    monkeypatch.setenv("VLAFOUNDRY_PROGRESS", "lines")
    run = fake_checkpoint("--eval.episodes", "6", "--eval.workers", "0", "--eval.max_steps", "2")
    rc, _ = _eval(run, tmp_path / "d")
    assert rc == 0
    cap = capsys.readouterr()
    assert "[eval] rollouts: 6 episodes of babyai/GoToLocal" in cap.out and "[eval] report:" in cap.out
    assert "closed loop: 6/6 ep (100%)" in cap.err and "\r" not in cap.err + cap.out


def test_robustness_reuses_the_full_input_rollouts():
    from vlafoundry.eval.robustness import run_robustness
    from vlafoundry.eval.rollout import ObservationCorruption, VectorRollout, evaluate_policy

    class Refuses(RandomPolicy):
        def select_action(self, obs):
            raise AssertionError("the full-input episodes were run again")

    settings = {"episodes": 3, "seed_start": 40, "max_steps": 2}
    with VectorRollout(3, 0) as pool:
        ref = evaluate_policy(RandomPolicy(), "babyai/GoToLocal", rollout=pool, **settings)
        rows = run_robustness(Refuses(), "babyai/GoToLocal", conditions=[ObservationCorruption()], rollout=pool,
                              reference=ref, **settings)  # fmt: skip
        assert rows[0]["success_rate"] == ref.summary["success_rate"] and rows[0]["episodes"] == 3
        with pytest.raises(AssertionError, match="run again"):  # other seeds: not the same episodes, so it runs
            run_robustness(Refuses(), "babyai/GoToLocal", conditions=[ObservationCorruption()], rollout=pool,
                           reference=ref, **{**settings, "seed_start": 41})  # fmt: skip
        rows = run_robustness(RandomPolicy(), "babyai/GoToLocal", rollout=pool, reference=ref, **settings)
    assert [r["condition"] for r in rows][:2] == ["full input", "no instruction"] and len(rows) == 7


def test_training_seed_ranges_count_the_seeds_the_expert_failed_on(tmp_path):
    """A dataset of 10 episodes whose expert failed on 3 seeds used seeds 5..17: all 13 are training seeds."""
    import json

    from vlafoundry.config import from_dict
    from vlafoundry.eval.pipeline import training_seed_ranges
    from vlafoundry.train.config import ExperimentConfig

    cfg = from_dict(ExperimentConfig, {"data": {"env": "babyai/GoToLocal", "seed": 5, "episodes": 10}})
    assert training_seed_ranges(cfg) == [(5, 15)]  # no dataset on disk: what the config says
    (tmp_path / "vlafoundry.json").write_text(json.dumps({"generation": {"seed": 5},
                                                           "counts": {"episodes": 10, "seeds_used": 13}}))
    cfg.data.path = str(tmp_path)
    assert training_seed_ranges(cfg) == [(5, 18)]
