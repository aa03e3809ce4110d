"""A new env family is one module plus one ``register_family(...)`` line: a toy 1-D corridor defined here is
generated into a dataset, loaded with the right spaces, verified, and evaluated, with no edit anywhere else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from toy_family import LEFT, RIGHT, ToyFamily  # tests/toy_family.py: the family's own module

from vlafoundry.envs import EnvFamily, canonical_name, expand_env_names, get_family, make_env
from vlafoundry.envs.family import register_family, unregister_family

class ScriptedPolicy:
    """Reads the instruction: left or right, every step."""

    stateless = True

    def reset(self, env_indices: Any = None) -> None:
        pass

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        return np.asarray([LEFT if "left" in s else RIGHT for s in obs["instruction"]], dtype=np.int64)


@pytest.fixture
def toy() -> Iterator[EnvFamily]:
    family = register_family(ToyFamily())  # the one registration line
    yield family
    unregister_family("toy")


def test_names_and_envs_route_through_the_family(toy: EnvFamily) -> None:
    assert get_family("toy/corridor") is toy
    assert expand_env_names("toy/corridor, toy/long-corridor") == ["toy/corridor", "toy/long-corridor"]
    assert canonical_name(["toy/corridor", "toy/long-corridor"]) == "toy/corridor,toy/long-corridor"
    env = make_env("toy/corridor")
    assert env.reset(seed=1)["instruction"] == "go right"
    with pytest.raises(ValueError, match="unknown toy task 'hall'"):
        expand_env_names("toy/hall")
    with pytest.raises(ValueError, match="one family"):
        expand_env_names("toy/corridor,babyai/GoToLocal")


def test_generate_load_and_evaluate_a_registered_family(toy: EnvFamily, tmp_path: Path) -> None:
    from vlafoundry.data import generate_dataset, make_dataset, verify_dataset
    from vlafoundry.eval.rollout import evaluate_policy

    root = tmp_path / "toy"
    result = generate_dataset("toy/corridor", 6, root, seed=0, shard_size=2, progress=False)
    meta = result.metadata
    assert meta["env"]["family"] == "toy" and meta["env"]["tasks"] == ["toy/corridor"]
    assert meta["generation"]["expert"] == "walk to the goal" and meta["counts"]["episodes"] == 6
    assert verify_dataset(root) == []

    ds = make_dataset(root, split="all", chunk=2)
    assert ds.spec.action_type == "discrete" and ds.spec.num_actions == 2 and ds.spec.state_dim == 5
    assert not ds.has_image and ds.tasks == ["toy/corridor"]
    assert sorted(ds.instructions) == ["go left", "go right"]
    sample = ds[0]
    assert tuple(sample["state"].shape) == (1, 5) and sample["action"].dtype.is_floating_point is False
    assert len(ds) == 6 * 2  # every episode: two steps from the middle to an end

    res = evaluate_policy(ScriptedPolicy(), "toy/corridor", episodes=4, workers=0)
    assert res.rows[0]["success_rate"] == 1.0 and res.rows[0]["episodes"] == 4
    both = evaluate_policy(ScriptedPolicy(), "toy/corridor,toy/long-corridor", episodes=2, workers=0)
    assert [r["task"] for r in both.rows][:2] == ["toy/corridor", "toy/long-corridor"]
    assert all(r["success_rate"] == 1.0 for r in both.rows)


def test_unregistered_family_is_refused(toy: EnvFamily) -> None:
    unregister_family("toy")
    with pytest.raises(ValueError, match="toy/corridor"):
        get_family("toy/corridor")
