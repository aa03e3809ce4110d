"""The policy contract every policy type implements, and its self-describing folder format.

A policy is an ``nn.Module`` with:

* ``forward(batch, loss_cfg=None) -> (loss, metrics)`` -- one training/validation step's scalar loss and a dict of
  detached 0-d tensors (reduced to Python numbers only when the trainer logs them: no host sync per step);
* ``select_action(observation) -> np.ndarray`` -- batched acting, one row per env;
* ``reset(env_indices=None)`` -- forget acting state (all envs, or some);
* ``processor`` -- its :class:`~vlafoundry.models.processor.PolicyProcessor` (inputs, statistics, tokenizer);
* ``from_dataset(cfg, dataset, loss_cfg=None)`` / ``from_state(cfg, spec, tokenizer, state)`` -- construction for
  new training / from a saved folder;
* ``save_pretrained(dir)`` / :func:`from_pretrained` -- ``config.json`` (``{"type": ..., <model config>}``),
  ``model.safetensors`` and ``processor.json`` (spec with normalisation statistics, tokenizer, policy state).

Evaluation reads more of :class:`~vlafoundry.models.vla.VLAPolicy` (``embed``, ``features``, ``action_outputs``)
where a policy has them; the closed-loop evaluator needs only the contract above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from vlafoundry.config import to_dict
from vlafoundry.io import load_json_file, load_tensors, save_tensors, write_json_atomic
from vlafoundry.models.config import ModelConfig
from vlafoundry.models.processor import PolicyProcessor
from vlafoundry.models.spec import PolicySpec

CONFIG_FILE, WEIGHTS_FILE, PROCESSOR_FILE = "config.json", "model.safetensors", "processor.json"
#: Tensors of checkpoints written before the processor held the state statistics (ignored when loading).
LEGACY_TENSORS = ("state_mean", "state_std")


class PolicyLoadError(ValueError):
    """A policy folder is missing a file, or its tensors / statistics do not match its config; names them."""


class Policy(nn.Module):
    """Base class of every policy type (see the module docstring)."""

    #: Registry name (``model.type``), set by :func:`vlafoundry.models.registry.register_policy`.
    type: ClassVar[str] = ""
    #: The config dataclass of this policy type.
    config_class: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, cfg: ModelConfig, processor: PolicyProcessor) -> None:
        super().__init__()
        self.cfg, self.processor = cfg, processor

    # ------------------------------------------------------------------ the contract
    @classmethod
    def from_dataset(cls, cfg: ModelConfig, dataset: Any, loss_cfg: Any = None) -> Policy:
        """A new policy for ``dataset`` (its spaces, statistics and instructions)."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, cfg: ModelConfig, spec: PolicySpec, tokenizer: Any, state: dict[str, Any]) -> Policy:
        """The policy a folder describes, before its weights are loaded (``state``: :meth:`policy_state`)."""
        raise NotImplementedError

    def policy_state(self) -> dict[str, Any]:
        """JSON-able construction arguments beyond config, spec and tokenizer (saved in ``processor.json``)."""
        return {}

    def forward(self, batch: dict[str, Any], loss_cfg: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def reset(self, env_indices: Any = None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ defaults a policy may override
    @property
    def spec(self) -> PolicySpec:
        return self.processor.spec

    @property
    def stateless(self) -> bool:
        """Whether a row's action depends only on that row's current observation (no history or memory)."""
        return True

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def compilable_modules(self) -> list[nn.Module]:
        """Tensor-only sub-modules that ``train.compile`` compiles in place."""
        return []

    def check_objectives(self, loss_cfg: Any) -> None:
        """Raise ``ValueError`` naming the key when ``loss_cfg`` asks for an objective this policy cannot train.
        The default policy trains behaviour cloning only."""
        for k in ("contrastive", "itm", "mlm", "mrm", "grounding"):
            if getattr(loss_cfg, k, 0) > 0:
                raise ValueError(f"loss.{k}: expected 0 for model.type={self.type!r} (it trains behaviour cloning "
                                 f"only), got {getattr(loss_cfg, k)}")

    # ------------------------------------------------------------------ the folder format
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``processor.json`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.write_files(d, config={"type": self.type, **to_dict(self.cfg)})
        return d

    def write_files(self, directory: Path, config: dict[str, Any] | None) -> None:
        """The weights and processor state (and ``config`` as config.json unless None: training checkpoints
        write their experiment config there instead, which holds this under ``model``)."""
        save_tensors(directory / WEIGHTS_FILE, self.state_dict())
        write_json_atomic(directory / PROCESSOR_FILE, {**self.processor.to_json(), "policy": self.policy_state()})
        if config is not None:
            write_json_atomic(directory / CONFIG_FILE, config)


def model_config_dict(config_json: Any, source: str) -> dict[str, Any]:
    """The model config inside a folder's config.json: the whole object (``save_pretrained``) or its ``model``
    section (a training checkpoint's experiment config)."""
    if not isinstance(config_json, dict):
        raise PolicyLoadError(f"{source}: expected a JSON object, got {type(config_json).__name__}")
    if "type" not in config_json and isinstance(config_json.get("model"), dict):
        return dict(config_json["model"])
    return dict(config_json)


def read_processor_state(directory: Path) -> dict[str, Any]:
    """``processor.json`` (or, in checkpoints written before it existed, ``extra.json``)."""
    path = directory / PROCESSOR_FILE
    if not path.is_file() and (directory / "extra.json").is_file():
        extra = load_json_file(directory / "extra.json", PolicyLoadError)
        return {"spec": extra.get("spec"), "tokenizer": extra.get("tokenizer"),
                "policy": {k: extra[k] for k in ("temperature", "learnable_temperature") if k in extra}}
    return load_json_file(path, PolicyLoadError)


def _legacy_key(key: str, expected: dict[str, Any]) -> str:
    """A key of a checkpoint written before the action heads became registered modules -> today's key
    (``action_head.0.weight`` -> ``action_head.net.0.weight``, ``action_head.action_head.0.weight`` ->
    ``action_head.decoder.action_head.0.weight``); other keys unchanged."""
    if key in expected or not key.startswith("action_head."):
        return key
    for inner in ("net.", "decoder."):
        cand = "action_head." + inner + key[len("action_head."):]
        if cand in expected:
            return cand
    return key


def check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Compare loaded tensors with ``model``'s state dict: every missing, unexpected or mis-shaped tensor is named.
    Checkpoints written before the policy contract load too (state statistics were buffers then, now the
    processor's; the action head's parameters had shorter names)."""
    expected = model.state_dict()
    tensors = {_legacy_key(k, expected): v for k, v in tensors.items() if k not in LEGACY_TENSORS or k in expected}
    problems = []
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing:
        problems.append("missing tensor" + ("s " if len(missing) > 1 else " ") + ", ".join(
            f"{k!r} (shape {tuple(expected[k].shape)})" for k in missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append("unexpected tensor" + ("s " if len(unexpected) > 1 else " ") + ", ".join(
            repr(k) for k in unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
    for k, v in tensors.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            problems.append(f"tensor {k!r} expected shape {tuple(expected[k].shape)}, found {tuple(v.shape)}")
        elif k in expected and v.dtype != expected[k].dtype and not (v.is_floating_point()
                                                                     and expected[k].is_floating_point()):
            problems.append(f"tensor {k!r} expected dtype {expected[k].dtype}, found {v.dtype}")
    if problems:
        raise PolicyLoadError(f"{source}: " + "; ".join(problems))
    return tensors


def build_from_folder(directory: str | Path, config: dict[str, Any] | None = None) -> Policy:
    """The policy a folder describes, weights loaded (``config``: the model config if already read)."""
    from vlafoundry.config import ConfigError, from_dict
    from vlafoundry.models.registry import policy_class

    d = Path(directory)
    if not d.is_dir():
        raise PolicyLoadError(f"{d}: expected a policy folder (config.json, model.safetensors, processor.json)")
    if not (d / CONFIG_FILE).exists() and ((d / "checkpoints").is_dir() or (d / "latest").is_file()):
        raise PolicyLoadError(f"{d}: a training run, not a policy folder; load it with vlafoundry.train.load_run "
                              f"(policy and experiment config), or pass one of its checkpoints "
                              f"({d.name}/checkpoints/step_N)")
    if config is None:
        config = model_config_dict(load_json_file(d / CONFIG_FILE, PolicyLoadError), str(d / CONFIG_FILE))
    cls = policy_class(str(config.get("type", "vla")), key=f"{d / CONFIG_FILE}: type")
    try:
        cfg = from_dict(cls.config_class, config, prefix="model")
    except ConfigError as exc:
        raise PolicyLoadError(f"{d / CONFIG_FILE}: {exc}") from None
    proc = read_processor_state(d)
    try:
        spec, tok = PolicyProcessor.state_from_json(proc, str(d / PROCESSOR_FILE))
    except ValueError as exc:
        raise PolicyLoadError(str(exc)) from None
    policy = cls.from_state(cfg, spec, tok, dict(proc.get("policy") or {}))
    tensors = check_tensors(policy, load_tensors(d / WEIGHTS_FILE, PolicyLoadError), str(d / WEIGHTS_FILE))
    policy.load_state_dict(tensors, strict=True)
    return policy


__all__ = ["Policy", "PolicyLoadError", "build_from_folder", "check_tensors", "model_config_dict"]
