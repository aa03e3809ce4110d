"""A dataset of two Meta-World tasks outside MT10, named by a suite file: generated through the CLI, loaded, its
recorded name re-expanding to the same tasks, a training config of it surviving a checkpoint's to_dict/from_dict,
and evaluation running on the list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlafoundry.cli.main import main
from vlafoundry.config import from_dict, to_dict
from vlafoundry.envs import expand_env_names

pytest.importorskip("metaworld")

PAIR = "metaworld/handle-press,metaworld/coffee-push"
PAIR_TASKS = ["metaworld/handle-press", "metaworld/coffee-push"]


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 episodes per task, generated from a suite file through `vlafoundry data generate`."""
    tmp = tmp_path_factory.mktemp("pair")
    suite = tmp / "tasks.yaml"
    suite.write_text("description: two tasks outside MT10\ntasks:\n  - metaworld/handle-press\n  - metaworld/coffee-push-v3\n")
    root = tmp / "ds"
    rc = main(["data", "generate", str(suite), "--episodes", "4", "--out", str(root), "--no-progress"])
    assert rc == 0
    return root


def test_list_dataset_loads_and_its_name_re_expands(pair_root: Path) -> None:
    from vlafoundry.data import make_dataset, verify_dataset

    ds = make_dataset(pair_root, split="all")
    assert ds.env_name == PAIR and ds.tasks == PAIR_TASKS
    assert expand_env_names(ds.env_name) == ds.tasks
    meta = ds.metadata
    assert meta["env"]["family"] == "metaworld" and meta["counts"]["per_task"] == {t: 2 for t in PAIR_TASKS}
    assert meta["minari"]["dataset_id"].startswith("vlafoundry/metaworld-handle-press-and-1-more-")
    assert set(meta["generation"]["versions"]) >= {"vlafoundry", "minari", "gymnasium", "metaworld", "mujoco"}
    assert ds.spec.action_type == "continuous" and ds.spec.state_dim == 39
    assert sorted(set(np.asarray(ds._ep_task).tolist())) == [0, 1]
    assert verify_dataset(pair_root) == []


def test_training_config_of_a_list_round_trips(pair_root: Path, tmp_path: Path) -> None:
    """A checkpoint stores the config as a dict; loading it rebuilds DataConfig, whose env must still expand
    (the old 'unknown Meta-World task' refusal: 'handle-press,metaworld/coffee-push' was read as one task)."""
    from vlafoundry.eval.rollout import _as_names
    from vlafoundry.train.config import DataConfig

    suite = tmp_path / "tasks.txt"
    suite.write_text("metaworld/handle-press\nmetaworld/coffee-push\n")
    cfg = DataConfig(env=str(suite), cache_dir=str(tmp_path / "cache"))
    assert cfg.env == PAIR  # the suite file's names, not its path
    again = from_dict(DataConfig, to_dict(cfg))
    assert again.env == PAIR and _as_names(again.env) == PAIR_TASKS
    slug = cfg.dataset_dir().name
    assert slug.startswith("metaworld-handle-press-and-1-more-") and slug == DataConfig(env=PAIR).dataset_dir().name
    assert DataConfig(env="metaworld/push").dataset_dir().name.startswith("metaworld-push-symbolic-")


def test_evaluate_policy_on_a_two_task_list() -> None:
    from vlafoundry.eval.rollout import evaluate_policy

    class Still:
        stateless = True

        def reset(self, env_indices=None) -> None:
            pass

        def select_action(self, obs: dict) -> np.ndarray:
            return np.zeros((len(obs["instruction"]), 4), dtype=np.float32)

    res = evaluate_policy(Still(), PAIR, episodes=1, max_steps=2, workers=0)
    assert [r["task"] for r in res.rows] == [*PAIR_TASKS, "all"]
    assert sorted(e["env"] for e in res.episodes) == sorted(PAIR_TASKS)
