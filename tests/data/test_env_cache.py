"""The bounded per-process env cache of dataset generation (``data/env_cache.py``): least recently used envs are
closed when over the size, and the dataset's bytes do not depend on the size."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from vlafoundry.data import env_cache
from vlafoundry.data.generate import generate_dataset


class FakeEnv:
    def __init__(self, task: str, log: list[tuple[str, str]]) -> None:
        self.task, self.log, self.closed = task, log, False
        log.append(("build", task))

    def close(self) -> None:
        assert not self.closed, f"{self.task} closed twice"
        self.closed = True
        self.log.append(("close", self.task))


@pytest.fixture
def empty_cache():
    """The process's cache emptied for the test; its envs and size put back afterwards."""
    saved, size = dict(env_cache._ENVS), env_cache.env_cache_size()
    env_cache._ENVS.clear()
    yield env_cache._ENVS
    for env in env_cache._ENVS.values():
        env.close()
    env_cache._ENVS.clear()
    env_cache._ENVS.update(saved)
    env_cache._SIZE[0] = size


def test_least_recently_used_envs_are_closed(empty_cache, monkeypatch):
    log: list[tuple[str, str]] = []
    monkeypatch.setattr(env_cache, "make_env", lambda task, **kw: FakeEnv(task, log))
    cfg = SimpleNamespace(env_kwargs=lambda: {"image": "rgb", "max_steps": None})
    env_cache.set_env_cache_size(2)
    a = env_cache._get_env("a", cfg)
    assert env_cache._get_env("b", cfg) is not a
    assert env_cache._get_env("a", cfg) is a  # a hit: a becomes the most recent
    env_cache._get_env("c", cfg)  # evicts b, the least recently used
    assert log == [("build", "a"), ("build", "b"), ("build", "c"), ("close", "b")]
    assert [k[0] for k in empty_cache] == ["a", "c"] and not a.closed
    b = env_cache._get_env("b", cfg)  # rebuilt; evicts a
    assert log[-2:] == [("build", "b"), ("close", "a")] and a.closed and not b.closed
    env_cache.set_env_cache_size(1)  # shrinking closes the extra ones now
    assert log[-1] == ("close", "c") and [k[0] for k in empty_cache] == ["b"]
    env_cache.set_env_cache_size(0)  # unbounded: nothing is closed any more
    for task in "defg":
        env_cache._get_env(task, cfg)
    assert len(empty_cache) == 5 and sum(1 for e in log if e[0] == "close") == 3
    key = next(iter(empty_cache))
    assert key == ("b", ("image", "rgb"), ("max_steps", None))  # keyed by task and make_env keywords, as before


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, None])
def test_bad_size_is_refused_with_expected_and_got(bad, tmp_path):
    with pytest.raises(ValueError, match=r"env_cache: expected an integer >= 0 .* got"):
        env_cache.set_env_cache_size(bad)
    with pytest.raises(ValueError, match=r"env_cache: expected an integer >= 0"):
        generate_dataset("babyai/GoToLocal", 2, tmp_path / "ds", env_cache=bad, progress=False)
    assert not (tmp_path / "ds").exists()


def test_bytes_do_not_depend_on_the_cache_size(empty_cache, tmp_path: Path, tree_digest, monkeypatch):
    """Two tasks played in turn with one env kept: every episode rebuilds its env (the previous one closed), and
    the dataset is byte-identical to the one made with one env per task (the unbounded cache)."""
    real = env_cache.make_env
    built: list[str] = []
    closed: list[str] = []

    def counting(task: str, **kw):
        env = real(task, **kw)
        built.append(task)
        close = env.close
        env.close = lambda: (closed.append(task), close())[1]
        return env

    monkeypatch.setattr(env_cache, "make_env", counting)
    env = "babyai/GoToLocal,babyai/GoToObj"
    generate_dataset(env, 6, tmp_path / "unbounded", shard_size=3, env_cache=0, progress=False)
    assert sorted(built) == ["babyai/GoToLocal", "babyai/GoToObj"] and closed == []
    for e in env_cache._ENVS.values():
        e.close()
    env_cache._ENVS.clear()
    built.clear()
    closed.clear()
    generate_dataset(env, 6, tmp_path / "one", shard_size=3, env_cache=1, progress=False)
    assert len(built) >= 6 and len(closed) == len(built) - 1 and len(env_cache._ENVS) == 1
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "unbounded")
