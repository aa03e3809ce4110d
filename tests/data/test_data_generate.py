"""Generation: round trip through Minari, determinism, resume, overwrite protection, failed seeds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vlafoundry.data.generate as gen
import vlafoundry.data.rollout as rollout
from vlafoundry.data import DemoDataset, generate_dataset, load_minari, verify_dataset
from vlafoundry.data.format import SHARD_DIR
from vlafoundry.data.rollout import EpisodeTimeout, run_expert_episode, time_limit
from vlafoundry.envs import make_env

N_EPISODES = 8  # as in conftest.babyai_root


def _expert_episodes(n: int) -> list[dict]:
    env = make_env("babyai/GoToLocal")
    out = []
    for seed in range(n):
        ep, reason = run_expert_episode(env, seed)
        assert reason == "ok"
        out.append(ep)
    return out


def test_round_trip_minari_and_demodataset(babyai_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import minari

    expected = _expert_episodes(N_EPISODES)
    meta = json.loads((babyai_root / "vlafoundry.json").read_text())
    # exactly as documented: point MINARI_DATASETS_PATH at DIR/minari and load by id
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(babyai_root / "minari"))
    dataset = minari.load_dataset(meta["minari"]["dataset_id"])
    assert dataset.total_episodes == N_EPISODES
    seeds = [m["seed"] for m in dataset.storage.get_episode_metadata(range(N_EPISODES))]
    assert seeds == list(range(N_EPISODES))
    for ep, exp in zip(dataset.iterate_episodes(), expected):
        assert ep.observations["image"].dtype == np.uint8
        np.testing.assert_array_equal(ep.observations["image"], exp["image"])
        np.testing.assert_array_equal(ep.observations["direction"], exp["state"].argmax(1))
        assert list(ep.observations["mission"]) == [exp["instruction"]] * len(exp["state"])
        np.testing.assert_array_equal(ep.actions, exp["action"])
        np.testing.assert_array_equal(ep.rewards, exp["reward"].astype(np.float64))
        np.testing.assert_array_equal(ep.terminations, exp["terminated"])
    assert len(load_minari(babyai_root)) == N_EPISODES  # the helper that does the same

    ds = DemoDataset(babyai_root, split="all")
    assert ds.num_episodes == N_EPISODES and len(ds) == sum(len(e["action"]) for e in expected)
    i = 0
    for e, exp in enumerate(expected):
        for t in range(len(exp["action"])):
            item = ds[i]
            assert int(item["episode"]) == e and int(item["step"]) == t
            assert np.array_equal(item["image"][0].numpy(), exp["image"][t])
            assert np.array_equal(item["state"][0].numpy(), exp["state"][t])
            assert int(item["action"][0]) == exp["action"][t]
            assert item["instruction"] == exp["instruction"] == ds.instructions[int(item["instruction_id"])]
            i += 1


def test_determinism_across_worker_counts(babyai_root: Path, tmp_path: Path, tree_digest) -> None:
    generate_dataset("babyai/GoToLocal", N_EPISODES, tmp_path / "w2", workers=2, seed=0, shard_size=2, progress=False)
    generate_dataset("babyai/GoToLocal", N_EPISODES, tmp_path / "w1b", workers=1, seed=0, shard_size=3, progress=False)
    ref = tree_digest(babyai_root)
    assert "minari/vlafoundry/babyai-gotolocal-v0/data/main_data.hdf5" in ref and "cache/image.zlib" in ref
    assert tree_digest(tmp_path / "w2") == ref
    assert tree_digest(tmp_path / "w1b") == ref  # shard size does not matter either
    generate_dataset("babyai/GoToLocal", N_EPISODES, tmp_path / "s1", workers=1, seed=1, progress=False)
    assert tree_digest(tmp_path / "s1")["cache/image.zlib"] != ref["cache/image.zlib"]


def test_resume_after_simulated_interruption(babyai_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tree_digest) -> None:
    out = tmp_path / "ds"

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "_assemble", die)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset("babyai/GoToLocal", N_EPISODES, out, shard_size=2, progress=False)
    monkeypatch.undo()
    shards = sorted((out / SHARD_DIR).glob("shard_*.npz"))
    assert len(shards) == 4 and not (out / "vlafoundry.json").exists()
    # the run "died" while writing shard 2 and before shard 3 existed
    partial = shards[2].with_name(shards[2].name + ".tmp")
    partial.write_bytes(shards[2].read_bytes()[:100])
    shards[2].unlink()
    shards[3].unlink()
    calls: list[int] = []
    real = gen._run_shard
    monkeypatch.setattr(gen, "_run_shard", lambda job: calls.append(job[1]) or real(job))
    result = generate_dataset("babyai/GoToLocal", N_EPISODES, out, shard_size=2, progress=False)
    assert sorted(calls) == [2, 3] and result.shards_reused == 2  # finished shards kept, only the rest redone
    assert not (out / SHARD_DIR).exists() and verify_dataset(out) == []
    ds = DemoDataset(out, split="all")
    assert ds.num_episodes == N_EPISODES and sorted(ds._ep_seed.tolist()) == list(range(N_EPISODES))
    assert tree_digest(out) == tree_digest(babyai_root)


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path: Path) -> None:
    """A real ``kill -9`` of the whole generation process group (slow: two interpreter start-ups)."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vlafoundry", "data", "generate", "babyai/GoToLocal", "--episodes", "200",
           "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    try:
        while time.time() < deadline and len(list((out / SHARD_DIR).glob("shard_*.npz"))) < 3:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = len(list((out / SHARD_DIR).glob("shard_*.npz")))
    assert 3 <= done_before < 40, "kill landed outside the shard phase"
    rc = subprocess.run(cmd, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    assert "resumed" in rc.stdout
    assert verify_dataset(out) == []
    ds = DemoDataset(out, split="all")
    seeds = ds._ep_seed.tolist()
    assert len(seeds) == 200 and len(set(seeds)) == 200 and seeds == sorted(seeds)
    meta = json.loads((out / "vlafoundry.json").read_text())
    assert seeds == sorted(set(range(meta["counts"]["seeds_used"])) - {f["seed"] for f in meta["failed_seeds"]})


def test_refuses_to_overwrite(babyai_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset("babyai/GoToLocal", 2, babyai_root, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_dataset("babyai/GoToLocal", 2, other, progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(babyai_root, copy)
    result = generate_dataset("babyai/GoToLocal", 3, copy, overwrite=True, progress=False)
    assert result.metadata["counts"]["episodes"] == 3 and verify_dataset(copy) == []


def test_interrupted_run_with_other_settings_is_not_mixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ds"
    monkeypatch.setattr(gen, "_assemble", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        generate_dataset("babyai/GoToLocal", 4, out, progress=False)
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="different settings"):
        generate_dataset("babyai/GoToLocal", 4, out, seed=5, progress=False)


def test_failed_episodes_are_dropped_counted_and_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = gen.run_expert_episode

    def flaky(env, seed, timeout_s=None, action_noise=0.0):
        return (None, "timeout") if seed in (2, 5) else real(env, seed, timeout_s, action_noise)

    monkeypatch.setattr(gen, "run_expert_episode", flaky)
    result = generate_dataset("babyai/GoToLocal", 6, tmp_path / "ds", shard_size=2, progress=False)
    meta = result.metadata
    assert meta["counts"]["episodes"] == 6 and meta["counts"]["failed"] == 2 and meta["counts"]["seeds_used"] == 8
    assert meta["failed_seeds"] == [{"seed": 2, "reason": "timeout"}, {"seed": 5, "reason": "timeout"}]
    assert DemoDataset(tmp_path / "ds", split="all")._ep_seed.tolist() == [0, 1, 3, 4, 6, 7]


class _LoopingEnv:
    """An env whose expert never returns (like BabyAIBot on a few Unlock seeds): it spins."""

    def __init__(self) -> None:
        self.spec = make_env("babyai/GoToLocal").spec

    def reset(self, seed=None):
        return {"image": np.zeros((7, 7, 3), np.uint8), "state": np.zeros(4, np.float32), "instruction": "x", "task": "t"}

    def expert_action(self):
        while True:
            pass


def test_episode_time_cap_counts_cpu_time() -> None:
    t0 = time.perf_counter()
    ep, reason = run_expert_episode(_LoopingEnv(), seed=0, timeout_s=0.2)
    assert ep is None and reason == "timeout" and time.perf_counter() - t0 < 5
    # a blocked expert uses no CPU: the wall-clock backstop stops it
    with pytest.raises(EpisodeTimeout, match="wall"):
        with time_limit(10.0, wall_seconds=0.1):
            time.sleep(1)
    # sleeping does not count against the CPU cap; computing does
    with time_limit(0.1, wall_seconds=5.0):
        time.sleep(0.3)
    with pytest.raises(EpisodeTimeout, match="cpu"):
        with time_limit(0.1, wall_seconds=5.0):
            while True:
                pass
    assert rollout.wall_backstop(10.0) == 300.0 and rollout.wall_backstop(0.5) == 60.0


def test_episode_time_cap_does_not_depend_on_load() -> None:
    # the episode is timed by the CPU it uses: a run that waits (a loaded machine) keeps its seeds
    class Slow:
        def __init__(self, env):
            self._env = env

        def __getattr__(self, name):
            return getattr(self._env, name)

        def step(self, action):
            time.sleep(0.05)  # the process is descheduled: wall time passes, CPU time does not
            return self._env.step(action)

    ep, reason = run_expert_episode(Slow(make_env("babyai/GoToLocal")), seed=3, timeout_s=0.1)
    assert reason == "ok" and len(ep["action"]) * 0.05 > 0.1  # longer than the cap in wall clock, still recorded


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_dataset("babyai/GoToLocal", 0, tmp_path / "a", progress=False)
    with pytest.raises(ValueError):
        generate_dataset("metaworld/nope", 1, tmp_path / "b", progress=False)
    with pytest.raises(ValueError):
        generate_dataset("babyai/GoToLocal", 1, tmp_path / "c", image="depth", progress=False)


def test_metaworld_push_two_episodes(tmp_path: Path) -> None:
    result = generate_dataset("metaworld/push", 2, tmp_path / "mw", max_steps=200, progress=False)
    meta = result.metadata
    assert meta["counts"]["episodes"] == 2 and meta["env"]["spec"]["action_type"] == "continuous"
    assert verify_dataset(tmp_path / "mw") == []
    dataset = load_minari(tmp_path / "mw")
    ep = next(iter(dataset.iterate_episodes()))
    assert ep.observations["observation"].shape[1] == 39 and ep.actions.dtype == np.float32
    assert ep.terminations[-1]  # ends at success
    ds = DemoDataset(tmp_path / "mw", split="all", chunk=3)
    b = ds.__getitems__([0, 1])
    assert "image" not in b and not b["image_present"].any()
    assert b["state"].shape == (2, 1, 39) and b["action"].shape == (2, 3, 4) and b["action"].dtype.is_floating_point
    np.testing.assert_array_equal(b["action"][0, 0].numpy(), ep.actions[0])


def test_dart_action_noise_executes_noisy_actions_and_records_expert_labels(tmp_path: Path) -> None:
    """With action_noise the env is stepped with noisy actions, the episode stores the expert's clean labels, the
    visited states differ from the noise-free episode, and the same seed gives the same bytes."""
    env = make_env("metaworld/reach")
    clean, _ = run_expert_episode(env, seed=3)
    noisy, _ = run_expert_episode(env, seed=3, action_noise=0.3)
    again, _ = run_expert_episode(env, seed=3, action_noise=0.3)
    assert clean is not None and noisy is not None and again is not None
    assert np.array_equal(noisy["state"], again["state"]) and np.array_equal(noisy["action"], again["action"])
    n = min(len(clean["action"]), len(noisy["action"]))
    assert not np.allclose(clean["state"][1 : n + 1], noisy["state"][1 : n + 1])  # the trajectory was perturbed
    # each label is the scripted expert's action for the state the episode was in (not the executed noisy one)
    for t in (0, n // 2, len(noisy["action"]) - 1):
        label = np.clip(env._policy.get_action(noisy["state"][t].astype(np.float64)), -1.0, 1.0)
        assert np.allclose(noisy["action"][t], label, atol=1e-5)
    env.close()


def test_dart_action_noise_discrete_replaces_actions_and_keeps_bot_labels() -> None:
    """Discrete noise: with probability p the env executes a random action; the labels stay the bot's, and the bot
    is told what was executed: replaying the executed actions reproduces every label."""
    env = make_env("babyai/GoToLocal")
    executed: list[int] = []
    step = env.step

    def recording_step(action):  # the actions the env really executed
        executed.append(int(action))
        return step(action)

    env.step = recording_step
    eps = []
    for seed in range(6):
        executed.clear()
        ep, reason = run_expert_episode(env, seed=seed, action_noise=0.4)
        if ep is not None:
            eps.append((seed, ep, list(executed)))
    assert len(eps) >= 4
    swapped = sum(int(np.sum(ep["action"] != np.asarray(ex))) for _, ep, ex in eps)
    assert swapped > 0  # some executed actions differ from the labels
    env.step = step
    for seed, ep, ex in eps:
        again, _ = run_expert_episode(env, seed=seed, action_noise=0.4)
        assert again is not None and np.array_equal(again["action"], ep["action"])  # seeded per episode
        env.reset(seed=seed)
        for t, a in enumerate(ex):  # the label at t is the bot's action after the executed actions before t
            assert env.expert_action() == ep["action"][t]
            env.step(a)
    env.close()


def test_dart_action_noise_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="action_noise"):
        generate_dataset("babyai/GoToLocal", 1, tmp_path / "a", action_noise=1.5, progress=False)
    with pytest.raises(ValueError, match="action_noise"):
        generate_dataset("metaworld/reach", 1, tmp_path / "b", action_noise=-1.0, progress=False)
    res = generate_dataset("metaworld/reach", 2, tmp_path / "c", action_noise=0.2, progress=False)
    assert res.metadata["generation"]["action_noise"] == 0.2
    res = generate_dataset("babyai/GoToLocal", 2, tmp_path / "d", action_noise=0.2, progress=False)
    assert res.metadata["generation"]["action_noise"] == 0.2


def test_env_whose_expert_never_succeeds_stops_early_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # like BabyAIBot on KeyInBox or PutNextS6N3Carrying: an assertion on every seed
    tried: list[int] = []

    def broken(env, seed, timeout_s=None, action_noise=0.0):
        tried.append(seed)
        return None, "error: AssertionError: nothing left to explore"

    monkeypatch.setattr(gen, "run_expert_episode", broken)
    with pytest.raises(RuntimeError, match=r"solved none of the \d+ seeds tried .*AssertionError: nothing left"):
        generate_dataset("babyai/GoToLocal", 1000, tmp_path / "ds", progress=False)
    # stopped after FAIL_FAST_SEEDS-ish seeds, not after max(2N, N + 1000) = 2000
    assert gen.FAIL_FAST_SEEDS <= len(tried) < gen.FAIL_FAST_SEEDS + 25  # one shard (25 seeds) past the limit at most
    err = capsys.readouterr().err
    assert err.count("expert failed on seed") == gen.LISTED_FAILURES and "counted, not listed" in err


def test_low_success_rate_gives_up_after_max_attempts_with_the_reasons(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = gen.run_expert_episode
    tried: list[int] = []

    def rare(env, seed, timeout_s=None, action_noise=0.0):  # one success in 50 seeds
        tried.append(seed)
        return real(env, seed, timeout_s, action_noise) if seed % 50 == 0 else (None, f"not solved in {seed} steps")

    monkeypatch.setattr(gen, "run_expert_episode", rare)
    with pytest.raises(RuntimeError, match=r"succeeded on only \d+ of 1\d\d\d seeds \(\d+ x not solved in N steps\)"):
        generate_dataset("babyai/GoToLocal", 40, tmp_path / "ds", shard_size=10, progress=False)
    assert len(tried) <= 1040  # max(2N, N + 1000), rounded up to a shard


def test_rounds_are_sized_by_the_success_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 shards of 2 seeds gave 4 of 8 episodes (rate 1/2): the next round asks for 4 * 1.1 / 0.5 = 8.8 seeds, 5 shards
    assert gen._next_round_shards(4, 2, have=4, n_needed=8, max_attempts=1008) == 9
    assert gen._next_round_shards(10, 10, have=99, n_needed=100, max_attempts=1100) == 11  # one missing: one shard
    assert gen._next_round_shards(4, 2, have=0, n_needed=8, max_attempts=1008) == 4 + 88  # none yet: rate 5%, 176 seeds
    assert gen._next_round_shards(100, 10, have=10, n_needed=1000, max_attempts=2000) == 200  # capped
    # end to end: half the seeds fail, two rounds (9 shards) suffice where +25% rounds needed three
    real = gen.run_expert_episode
    real_shard = gen._run_shard
    shards: list[int] = []

    def half(env, seed, timeout_s=None, action_noise=0.0):
        return real(env, seed, timeout_s, action_noise) if seed % 2 == 0 else (None, "timeout")

    monkeypatch.setattr(gen, "run_expert_episode", half)
    monkeypatch.setattr(gen, "_run_shard", lambda job: shards.append(job[1]) or real_shard(job))
    result = generate_dataset("babyai/GoToLocal", 8, tmp_path / "ds", shard_size=2, progress=False)
    assert result.metadata["counts"]["episodes"] == 8 and result.metadata["counts"]["seeds_used"] == 15
    assert shards == list(range(9))
