"""The plug-in promise of docs/architecture.md: a new policy type and a new env family are each one module plus one
registration line. Both are defined here (the env family in tests/toy_family.py), with no edit anywhere in the
package: the toy policy trains with the one ``Trainer`` on demonstrations generated from the toy family, is saved
and reloaded through the policy folder format, and is evaluated in closed loop."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy_family import ToyFamily
from torch import nn

from vlafoundry.config import from_dict, require
from vlafoundry.envs.family import register_family, unregister_family
from vlafoundry.models import ModelConfig, Policy, PolicyProcessor, PolicySpec, load_policy, register_policy
from vlafoundry.models.registry import POLICIES
from vlafoundry.train.config import ExperimentConfig


@dataclass
class ToyConfig(ModelConfig):
    type: str = "toy_mlp"
    hidden: int = 16

    def __post_init__(self) -> None:
        require(self.hidden >= 1, "model.hidden", "an integer >= 1", self.hidden)


class ToyPolicy(Policy):
    """An MLP on [standardised state, which instruction (hashed)] -> logits; behaviour cloning only."""

    config_class = ToyConfig

    def __init__(self, cfg: ToyConfig, spec: PolicySpec) -> None:
        super().__init__(cfg, PolicyProcessor(spec, state=True))
        self.words = nn.Embedding(16, cfg.hidden)
        self.net = nn.Sequential(nn.Linear(spec.state_dim + cfg.hidden, cfg.hidden), nn.ReLU(),
                                 nn.Linear(cfg.hidden, spec.num_actions))

    @classmethod
    def from_dataset(cls, cfg: ToyConfig, dataset: Any, loss_cfg: Any = None) -> ToyPolicy:
        return cls(cfg, PolicySpec.from_dataset(dataset))

    @classmethod
    def from_state(cls, cfg: ToyConfig, spec: PolicySpec, tokenizer: Any, state: dict[str, Any]) -> ToyPolicy:
        return cls(cfg, spec)

    def logits(self, state: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        ids = torch.tensor([sum(map(ord, s)) % 16 for s in instructions], device=state.device)
        return self.net(torch.cat([state[:, -1], self.words(ids)], dim=-1))  # (B, n_actions)

    def forward(self, batch: dict[str, Any], loss_cfg: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = self.processor(batch, self.device, training=self.training)
        logits = self.logits(b["state"], b["instruction"])
        act = b["action"].reshape(len(logits), -1)[:, 0].long()
        loss = F.cross_entropy(logits, act)
        return loss, {"loss": loss.detach(), "action_acc": (logits.argmax(-1) == act).float().mean().detach()}

    @torch.no_grad()
    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        self.processor.check_observation(observation)
        state = self.processor.normalize_state(torch.as_tensor(np.asarray(observation["state"]), dtype=torch.float32))
        return self.logits(state.unsqueeze(1), list(observation["instruction"])).argmax(-1).numpy()

    def reset(self, env_indices: Any = None) -> None:
        pass


@pytest.fixture
def plugins():
    register_policy("toy_mlp")(ToyPolicy)  # the policy type's one registration line
    family = register_family(ToyFamily())  # the env family's one registration line
    yield family
    unregister_family("toy")
    POLICIES.unregister("toy_mlp")


def test_a_toy_policy_type_trains_saves_and_acts_on_a_toy_env_family(plugins, tmp_path):
    from vlafoundry.data import generate_dataset
    from vlafoundry.eval.rollout import evaluate_policy
    from vlafoundry.train.trainer import Trainer, load_run

    generate_dataset("toy/corridor", 40, tmp_path / "data", seed=0, progress=False)
    cfg = from_dict(ExperimentConfig, {
        "name": "toy",
        "data": {"path": str(tmp_path / "data"), "env": "toy/corridor", "val_fraction": 0.25},
        "model": {"type": "toy_mlp", "hidden": 16},
        "train": {"steps": 60, "batch_size": 16, "lr": 1e-2, "warmup_steps": 1, "progress": False,
                  "log_every": 20, "eval_every": 60, "checkpoint_every": 60},
    })
    assert isinstance(cfg.model, ToyConfig)
    summary = Trainer(cfg, tmp_path / "run").fit()
    assert summary["step"] == 60 and summary["last"]["action_acc"] == 1.0

    policy, run_cfg, data = load_run(tmp_path / "run")  # experiment config + policy from the checkpoint
    assert isinstance(policy, ToyPolicy) and run_cfg.model == cfg.model
    policy.save_pretrained(tmp_path / "folder")
    assert json.loads((tmp_path / "folder" / "config.json").read_text()) == {"type": "toy_mlp", "hidden": 16}
    again = load_policy(tmp_path / "folder")
    for a, b in zip(policy.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    result = evaluate_policy(again, "toy/corridor", episodes=20, workers=0, seed_start=10**9)
    assert result.summary["success_rate"] == 1.0

    # the eval pipeline, as `vlafoundry eval RUN` runs it: closed loop, offline pass, report
    from vlafoundry.eval.pipeline import evaluate_checkpoint

    run = evaluate_checkpoint(tmp_path / "run", {"episodes": 10, "workers": 0, "gifs": 0, "robustness": True},
                              log=lambda *a: None)
    assert run.env == "toy/corridor" and run.closed_loop.summary["success_rate"] == 1.0
    assert (tmp_path / "run" / "eval.json").is_file() and (tmp_path / "run" / "report.md").is_file()
    assert run.offline["metrics"]["action_acc"] == 1.0 and run.offline["metrics"]["samples"] >= 1
    assert any("from the policy's own forward" in n for n in run.notes)


# ------------------------------------------------------------------------------------------ the folder format
def _vla_folder(tmp_path):
    from vlafoundry.models import PolicyConfig, VLAPolicy
    from vlafoundry.nn.language import TextTokenizer

    spec = PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4,
                      image_shape=[7, 7, 3], state_mean=[0.25] * 4, state_std=[0.43] * 4, tasks=["babyai/GoToLocal"])
    tok = TextTokenizer.train(["go to the red ball", "pick up a key"], kind="word")
    policy = VLAPolicy(PolicyConfig(d_model=32, num_heads=2, d_ff=64, num_layers=1), spec, tok)
    return policy, policy.save_pretrained(tmp_path / "p")


def test_save_pretrained_folder_round_trips_and_is_self_describing(tmp_path):
    policy, folder = _vla_folder(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "processor.json"]
    assert json.loads((folder / "config.json").read_text())["type"] == "vla"
    proc = json.loads((folder / "processor.json").read_text())
    assert proc["spec"]["state_std"] == [0.43] * 4 and proc["tokenizer"] and "temperature" in proc["policy"]
    again = load_policy(folder)
    obs = {"image": np.zeros((2, 7, 7, 3), np.uint8), "state": np.ones((2, 4), np.float32),
           "instruction": ["go to the red ball", "pick up a key"]}
    policy.eval()
    torch.testing.assert_close(policy.predict_chunk(obs), again.predict_chunk(obs))


@pytest.mark.parametrize("damage,message", [
    ("drop_tensor", r"missing tensor 'obs_embed.weight' \(shape \(64, 32\)\)"),
    ("extra_tensor", r"unexpected tensor 'bogus'"),
    ("reshape_tensor", r"tensor 'obs_embed.bias' expected shape \(64,\), found \(3,\)"),
    ("drop_stats", r"processor.json: spec: missing normalisation statistics \(state_mean/state_std\) for state_dim=4"),
    ("short_stats", r"processor.json: spec: state_std: expected 4 values \(state_dim\), got 3"),
    ("no_processor", r"processor.json: missing file"),
])
def test_loading_refuses_a_damaged_folder_naming_what_is_wrong(tmp_path, damage, message):
    from safetensors.torch import load_file, save_file

    from vlafoundry.models import PolicyLoadError

    _, folder = _vla_folder(tmp_path)
    weights, proc_file = folder / "model.safetensors", folder / "processor.json"
    tensors, proc = load_file(str(weights)), json.loads(proc_file.read_text())
    if damage == "drop_tensor":
        del tensors["obs_embed.weight"]
    elif damage == "extra_tensor":
        tensors["bogus"] = torch.zeros(1)
    elif damage == "reshape_tensor":
        tensors["obs_embed.bias"] = torch.zeros(3)
    elif damage == "drop_stats":
        proc["spec"]["state_mean"] = None
    elif damage == "short_stats":
        proc["spec"]["state_std"] = [1.0] * 3
    save_file(tensors, str(weights))
    proc_file.write_text(json.dumps(proc))
    if damage == "no_processor":
        proc_file.unlink()
    with pytest.raises(PolicyLoadError, match=message):
        load_policy(folder)


# ------------------------------------------------------------------------------------------ one implementation each
def test_a_constant_training_dimension_is_centred_not_scaled_when_it_moves():
    """The dataset and the processor share one rule (vlafoundry.normalize.safe_std): std < 1e-6 -> 1."""
    spec = PolicySpec(env="x/y", action_type="continuous", action_dim=1, state_dim=2, state_mean=[1.0, 5.0],
                      state_std=[2.0, 0.0])
    proc = PolicyProcessor(spec, state=True)
    out = proc.normalize_state(torch.tensor([[3.0, 5.5]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.5]]))  # not 0.5 / 1e-6 = 5e5


def test_modality_dropout_is_the_processors_and_only_in_training():
    from vlafoundry.models import ModalityDropoutConfig

    spec = PolicySpec(env="x/y", action_type="discrete", action_dim=1, num_actions=3, state_dim=2,
                      state_mean=[0.0, 0.0], state_std=[1.0, 1.0])
    proc = PolicyProcessor(spec, state=True, modality_dropout=ModalityDropoutConfig(state=0.99, instruction=0.99))
    batch = {"state": torch.ones(64, 2), "instruction": ["go"] * 64}
    train = proc(batch, torch.device("cpu"), training=True)
    assert (~train["state_present"]).sum() > 50 and (train["state"][~train["state_present"]] == 0).all()
    assert sum(s == "" for s in train["instruction"]) > 50
    plain = proc(batch, torch.device("cpu"), training=False)
    assert plain["state_present"].all() and plain["instruction"] == ["go"] * 64


def test_forward_metrics_are_tensors_not_floats(tmp_path):
    policy, _ = _vla_folder(tmp_path)
    batch = {"image": torch.zeros(3, 1, 7, 7, 3, dtype=torch.uint8), "state": torch.zeros(3, 1, 4),
             "instruction": ["go to the red ball"] * 3, "action": torch.zeros(3, 1, dtype=torch.long),
             "action_mask": torch.ones(3, 1, dtype=torch.bool)}
    _, metrics = policy(batch)
    assert metrics and all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad
                           for v in metrics.values())


def test_a_run_folder_given_to_load_policy_says_how_to_load_it(tmp_path):
    from vlafoundry.models import PolicyLoadError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(PolicyLoadError, match=r"a training run, not a policy folder; load it with "
                                              r"vlafoundry.train.load_run"):
        load_policy(tmp_path / "run")


def test_a_checkpoint_written_before_the_policy_contract_still_loads_and_computes_the_same():
    """tests/fixtures/legacy_policy: a tiny checkpoint written by the code before the contract (state statistics as
    buffers, extra.json, action-head parameters ``action_head.0.*``) and the logits that code computed."""
    from pathlib import Path

    folder = Path(__file__).parents[1] / "fixtures" / "legacy_policy"
    policy = load_policy(folder)
    obs = json.loads((folder / "observation.json").read_text())
    batch = {"image": torch.tensor(obs["image"], dtype=torch.uint8), "state": torch.tensor(obs["state"]),
             "instruction": obs["instruction"]}
    with torch.no_grad():
        out = policy.action_outputs(policy.features(policy.encode(policy.prepare(batch))))
    torch.testing.assert_close(out, torch.from_numpy(np.load(folder / "expected_logits.npy")), rtol=1e-5, atol=1e-5)


def test_language_adapter_reaches_the_pretrained_encoder_and_is_refused_elsewhere():
    from vlafoundry.config import ConfigError
    from vlafoundry.models import PolicyConfig

    with pytest.raises(ConfigError, match=r"model.language_adapter: expected 0 unless model.language is 'pretrained'"):
        PolicyConfig(language="scratch", language_adapter=8)
    assert PolicyConfig(language="pretrained", language_adapter=8).language_adapter == 8
