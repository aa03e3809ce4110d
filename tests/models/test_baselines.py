"""TaskOneHotMLP (the one-hot-task MT10 baseline) and the shipped unseen-phrasing file for MT10.

The baseline tests train on real expert demonstrations: 4 Meta-World MT10 episodes (reach, push, pick-place,
door-open; ~250 steps) generated once per module with the library's generator (~3 s).
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import torch

from vlafoundry.config import ConfigError
from vlafoundry.data import DemoDataset, generate_dataset
from vlafoundry.envs.metaworld import MT10_TASKS
from vlafoundry.envs.metaworld_instructions import INSTRUCTIONS
from vlafoundry.eval.paraphrase import load_paraphrases
from vlafoundry.eval.rollout import ObservationCorruption, evaluate_policy
from vlafoundry.eval.subgroups import normalize_instruction
from vlafoundry.models import OneHotMLPConfig, PolicySpec, TaskOneHotMLP, load_policy

TINY = OneHotMLPConfig(hidden=32, layers=2)


@pytest.fixture(scope="module")
def mt10_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt10") / "ds"
    generate_dataset("metaworld/mt10", 4, root, workers=1, progress=False)
    return DemoDataset(root, split="all")


def _model(ds, cfg=TINY, seed=0):
    torch.manual_seed(seed)
    return TaskOneHotMLP.from_dataset(cfg, ds)


def test_config_validation():
    for bad in ({"hidden": 0}, {"layers": 0}, {"activation": "swish"}, {"dropout": 1.0}, {"loss": "huber"}):
        with pytest.raises(ConfigError, match=r"model\.\w+: expected"):
            OneHotMLPConfig(**bad)


def test_spec_requirements():
    spec = PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4,
                      tasks=["babyai/GoToLocal"])
    with pytest.raises(ValueError, match="continuous"):
        TaskOneHotMLP(TINY, spec)
    spec = PolicySpec(env="metaworld/mt10", action_type="continuous", action_dim=4, state_dim=39, tasks=[])
    with pytest.raises(ValueError, match="tasks"):
        TaskOneHotMLP(TINY, spec)


def test_shapes_bounds_and_contract(mt10_ds):
    model = _model(mt10_ds)
    assert model.spec.tasks == mt10_ds.tasks and len(model.spec.tasks) == 10
    batch = mt10_ds.__getitems__(list(range(16)))
    loss, metrics = model(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"bc", "action_l1", "loss"} <= set(metrics)
    out = model.predict(batch["state"], batch["task_id"])
    assert out.shape == (16, 4)
    big = model.predict(torch.full((3, 39), 1e4), torch.tensor([0, 1, -1]))  # tanh-bounded head
    assert big.abs().max() <= 1.0
    obs = {"state": batch["state"][:3, -1].numpy(), "task": ["metaworld/push", "metaworld/reach", ""],
           "instruction": ["x", "y", "z"]}
    act = model.select_action(obs)
    assert act.shape == (3, 4) and act.dtype == np.float32
    assert model.stateless is True
    model.reset()
    model.reset([1])
    with pytest.raises(ValueError, match="not one of the tasks"):
        model.select_action({"state": obs["state"][:1], "task": ["metaworld/hammer"]})
    with pytest.raises(ValueError, match="task"):
        model.select_action({"state": obs["state"][:1], "instruction": ["push the puck to the goal"]})
    with pytest.raises(ValueError, match="state"):
        model.select_action({"state": obs["state"][:2], "task": ["metaworld/push"]})


def test_one_hot_reads_the_task_not_the_instruction(mt10_ds):
    model = _model(mt10_ds)
    s = mt10_ds.__getitems__([0])["state"][:, -1].repeat(2, 1).numpy()
    a = model.select_action({"state": s, "task": ["metaworld/reach", "metaworld/push"], "instruction": ["a", "a"]})
    b = model.select_action({"state": s, "task": ["metaworld/reach", "metaworld/push"], "instruction": ["b", ""]})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], a[1])  # the one-hot changes the action
    oh = model.one_hot(torch.tensor([2, -1]))
    assert oh[0].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0] and oh[1].sum() == 0


def test_every_parameter_gets_a_gradient(mt10_ds):
    model = _model(mt10_ds)
    loss, _ = model(mt10_ds.__getitems__(list(range(0, len(mt10_ds), 7))))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_loss_falls_when_trained_by_the_trainer(mt10_ds, tmp_path):
    """The baseline trains with the library's one Trainer (model.type onehot_mlp), like every policy."""
    from vlafoundry.config import from_dict
    from vlafoundry.train.config import ExperimentConfig
    from vlafoundry.train.trainer import Trainer, load_run

    cfg = from_dict(ExperimentConfig, {
        "data": {"path": str(mt10_ds.root), "val_fraction": 0.0},
        "model": {"type": "onehot_mlp", "hidden": 64, "layers": 2},
        "train": {"steps": 80, "batch_size": 64, "lr": 3e-3, "warmup_steps": 5, "progress": False,
                  "eval_every": 80, "log_every": 20, "checkpoint_every": 80, "weight_decay": 0.0},
    })
    probe = mt10_ds.__getitems__(list(range(len(mt10_ds))))
    trainer = Trainer(cfg, tmp_path / "run", phase="train")
    with torch.no_grad():
        before = float(trainer.policy.eval()(probe)[0])
    summary = trainer.fit()
    policy, saved_cfg, _ = load_run(tmp_path / "run")
    with torch.no_grad():
        after = float(policy(probe)[0])
    assert summary["step"] == 80 and isinstance(policy, TaskOneHotMLP) and saved_cfg.model.type == "onehot_mlp"
    assert after < 0.6 * before, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [20, 40, 60, 80]
    assert all(isinstance(r["loss"], float) for r in rows)


def test_save_pretrained_round_trip(mt10_ds, tmp_path):
    model = _model(mt10_ds)
    model.save_pretrained(tmp_path / "mlp")
    assert json.loads((tmp_path / "mlp" / "config.json").read_text())["type"] == "onehot_mlp"
    clone = load_policy(tmp_path / "mlp")
    assert isinstance(clone, TaskOneHotMLP) and not clone.training
    batch = mt10_ds.__getitems__([0, 5, 9])
    torch.testing.assert_close(clone.predict(batch["state"], batch["task_id"]),
                               model.predict(batch["state"], batch["task_id"]))


def test_scored_by_the_closed_loop_evaluator_from_env_task_names(mt10_ds):
    class Recording(TaskOneHotMLP):
        seen: list = []

        def select_action(self, observation):
            self.seen.append(list(observation["task"]))
            return super().select_action(observation)

    torch.manual_seed(0)
    model = Recording(TINY, PolicySpec.from_dataset(mt10_ds)).eval()
    envs = ["metaworld/reach", "metaworld/push"]
    res = evaluate_policy(model, envs, episodes=2, num_envs=4, workers=0, max_steps=4)
    assert [r["task"] for r in res.rows] == [*envs, "all"]
    assert res.summary["episodes"] == 4 and all(e["length"] == 4 for e in res.episodes)
    assert model.seen[0] == ["metaworld/reach", "metaworld/reach", "metaworld/push", "metaworld/push"]
    # no instruction at all: identical actions, because the baseline conditions on the task id only
    blind = evaluate_policy(model, envs, episodes=2, num_envs=4, workers=0, max_steps=4,
                            corruption=ObservationCorruption(remove=("instruction",)))
    assert [e["actions"] for e in blind.episodes] == [e["actions"] for e in res.episodes]


# ------------------------------------------------------------------------- the unseen MT10 phrasings file
def _unseen_file():
    return resources.files("vlafoundry") / "eval" / "paraphrases" / "metaworld-mt10-unseen.json"


def test_mt10_unseen_paraphrases_validate_and_cover_every_training_phrasing():
    with resources.as_file(_unseen_file()) as path:
        pmap = load_paraphrases(path)
    for task in MT10_TASKS:
        for phrasing in INSTRUCTIONS[task]:
            found = pmap.alternatives(phrasing)
            assert found is not None, (task, phrasing)
            alts, _ = found
            assert len({normalize_instruction(a) for a in alts}) >= 3, task
            assert pmap.rewrite(phrasing, choice=10**9) != phrasing


def test_mt10_unseen_paraphrases_are_disjoint_from_training_instructions():
    with resources.as_file(_unseen_file()) as path:
        pmap = load_paraphrases(path)
    training = {normalize_instruction(s) for phrasings in INSTRUCTIONS.values() for s in phrasings}
    owner: dict[str, str] = {}
    for task in MT10_TASKS:
        alts = {normalize_instruction(a) for p in INSTRUCTIONS[task] for a in pmap.alternatives(p)[0]}
        assert not alts & training, (task, alts & training)
        for a in alts:  # one phrasing never stands for two tasks
            assert owner.setdefault(a, task) == task, (a, owner[a], task)
    assert len(pmap) == sum(len(INSTRUCTIONS[t]) for t in MT10_TASKS)
