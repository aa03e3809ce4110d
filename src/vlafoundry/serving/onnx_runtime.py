"""A policy that acts through its exported ONNX graph in onnxruntime (``vlafoundry serve --backend onnx``).

:class:`OnnxPolicy` wraps the loaded PyTorch policy (its processor tokenises, its action head picks actions with
the same argmax / sampling rule and generator discipline) and runs the network in onnxruntime. Its acting state is
an :class:`~vlafoundry.models.acting.ActingState` (the GRU state per row), so the server's per-client state and
batching (:mod:`vlafoundry.serving.state`) apply unchanged. Supported: ``history`` 1 and ``chunk`` 1 (the
quickstart policy); other configs are refused, naming the key (their windows and queues live in PyTorch's
``ActingState``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlafoundry.models.acting import ActingState
from vlafoundry.serving.onnx_export import PRESENT, ExportError, check_exportable


class OnnxActing(ActingState):
    """Per-row acting state of an :class:`OnnxPolicy`: the GRU state (``memory_h``) and the sampling generator."""

    @torch.no_grad()
    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        p = self._policy
        n = p.processor.check_observation(observation)
        if self.history is None or len(self.queue) != n:
            self._start({}, n, 1)  # the base state's per-row fields (queues, plans, step counters)
            self.memory_h = torch.zeros(n, p.cfg.d_model) if p.has_memory else None
        feeds = p.feeds(observation, n, self.memory_h)
        outs = p.session.run(None, feeds)
        if p.has_memory:
            self.memory_h = torch.from_numpy(outs[1])
        out = torch.from_numpy(outs[0])
        cfg = p.cfg
        actions = p.torch_policy.action_head.pick(out, cfg.action_selection == "sample", cfg.sample_temperature,
                                                  self.generator)[:, 0]
        return actions.numpy().astype(np.int64 if p.head_kind == "discrete" else np.float32)


class OnnxPolicy:
    """The acting side of ``torch_policy`` with its network in onnxruntime (graph at ``path``)."""

    type = "vla"

    def __init__(self, torch_policy: Any, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        check_exportable(torch_policy)
        cfg = torch_policy.cfg
        if cfg.history != 1 or cfg.chunk != 1:
            raise ExportError(f"model.history/model.chunk: the onnx backend expected 1 and 1, got {cfg.history} and "
                              f"{cfg.chunk} (serve this policy with --backend torch)")
        self.torch_policy = torch_policy.eval()
        self.cfg, self.processor, self.head_kind = cfg, torch_policy.processor, torch_policy.head_kind
        self.has_memory = torch_policy.memory is not None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.acting = OnnxActing(self)

    @property
    def spec(self) -> Any:
        return self.torch_policy.spec

    @property
    def stateless(self) -> bool:
        return not self.has_memory

    def eval(self) -> OnnxPolicy:
        return self

    def feeds(self, obs: dict[str, Any], n: int, memory_h: torch.Tensor | None) -> dict[str, np.ndarray]:
        f: dict[str, np.ndarray] = {}
        names = set(self.inputs)
        if "image" in names:
            f["image"] = np.ascontiguousarray(np.asarray(obs["image"], dtype=np.uint8)[:, None])
        if "state" in names:
            f["state"] = np.ascontiguousarray(np.asarray(obs["state"], dtype=np.float32)[:, None])
        f["obs_mask"] = np.ones((n, 1), dtype=bool)
        if "lang_ids" in names:
            ids, mask = self.processor.tokenize(list(obs["instruction"]), torch.device("cpu"))
            f["lang_ids"], f["lang_mask"] = ids.numpy(), mask.numpy()
        for k in PRESENT:
            f[k] = np.asarray(obs[k], dtype=bool) if k in obs else np.ones(n, dtype=bool)
        if memory_h is not None:
            f["memory_in"] = memory_h.numpy()
        return f

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        return self.acting.select_action(observation)

    def reset(self, env_indices: Any = None) -> None:
        self.acting.reset(env_indices)


__all__ = ["OnnxActing", "OnnxPolicy"]
