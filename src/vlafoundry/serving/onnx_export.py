"""ONNX export of a policy's acting path (``vlafoundry export CHECKPOINT --onnx OUT``).

The graph is one acting step of a :class:`~vlafoundry.models.vla.VLAPolicy`, from raw observation arrays to the
action head's outputs, with the processor's state standardisation inside:

========================  =============================  ==========================================================
input                     shape, dtype                   note
========================  =============================  ==========================================================
``image``                 (N, T, H, W, C) uint8          when the policy has a vision encoder; T = ``history``
``state``                 (N, T, S) float32              raw state (standardised in the graph with the statistics)
``obs_mask``              (N, T) bool                    valid frames of the window (all true with ``history`` 1)
``lang_ids``              (N, L) int64                   token ids: tokenisation stays outside the graph (the
``lang_mask``             (N, L) bool                    tokenizer is written beside the model in OUT.json)
``image_present`` ...     (N,) bool                      the three ``<modality>_present`` flags
``memory_in``             (N, D) float32                 with ``model.memory gru``: the GRU state (zeros at the
                                                         start of an episode); ``memory_out`` is the next one
========================  =============================  ==========================================================

Output ``action_outputs``: (N, K, n_actions) logits | (N, K, A) continuous | (N, K, A, bins) logits. Picking (argmax
or sampling at ``sample_temperature``) and chunk queues stay outside, as the history window does.

Refused, naming why: ``model.language pretrained`` (the MiniLM encoder is a separate HF model with its own
tokenizer), policy types other than ``vla``.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PRESENT = ("image_present", "instruction_present", "state_present")


class ExportError(ValueError):
    """This policy cannot be exported to ONNX (the message names why)."""


def check_exportable(policy: Any) -> None:
    if getattr(policy, "type", None) != "vla":
        raise ExportError(f"model.type: ONNX export supports 'vla' policies, got {getattr(policy, 'type', None)!r} "
                          f"(its acting path is not the VLAPolicy graph)")
    if policy.cfg.language == "pretrained":
        raise ExportError("model.language: expected 'scratch' or 'none' for ONNX export, got 'pretrained' (the "
                          "pretrained MiniLM encoder runs in transformers with its own WordPiece tokenizer; export it "
                          "separately or train with model.language scratch)")
    if policy.head_kind not in ("discrete", "continuous", "binned"):
        raise ExportError(f"model.head: expected 'discrete', 'continuous' or 'binned' for ONNX export, got "
                          f"{policy.head_kind!r} (a generative head samples its chunk in a loop of "
                          f"{policy.cfg.flow_steps if policy.head_kind == 'flow' else policy.cfg.diffusion_steps} "
                          "denoiser calls from its own noise; serve it with `vlafoundry serve` instead)")


class ActingGraph(nn.Module):
    """The traced module: raw arrays -> action head outputs (and the next memory state)."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.policy = policy
        self.register_buffer("state_mean", policy.processor._mean.clone())
        self.register_buffer("state_std", policy.processor._std.clone())

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        p = self.policy
        b: dict[str, Any] = {"obs_mask": inputs["obs_mask"], "seq": None, "instruction": None}
        for k in PRESENT:
            b[k] = inputs[k]
        if p.has_image:
            b["image"] = inputs["image"]
        if p.has_state:
            b["state"] = (inputs["state"] - self.state_mean) / self.state_std
        enc = p.encode(b, lang_ids=inputs.get("lang_ids"), lang_mask=inputs.get("lang_mask"))
        fused = p.fuse(enc)
        if p.memory is not None:
            feats, h = p.remember(fused, None, inputs["memory_in"])
            return p.action_outputs(feats), h
        return (p.action_outputs(fused),)


class _Positional(nn.Module):
    """torch.onnx wants positional inputs: wraps :class:`ActingGraph` with a fixed input order."""

    def __init__(self, graph: ActingGraph, names: list[str]) -> None:
        super().__init__()
        self.graph, self.names = graph, names

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.graph(dict(zip(self.names, args, strict=True)))


def example_inputs(policy: Any, observation: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Graph inputs for an acting observation (one frame per row: ``history`` 1, or the window's last frame
    repeated), tokenised with the policy's tokenizer, memory zeros."""
    n = len(observation["instruction"])
    t = int(policy.cfg.history)
    out: dict[str, torch.Tensor] = {}
    if policy.has_image:
        img = torch.as_tensor(np.asarray(observation["image"], dtype=np.uint8))
        out["image"] = img.unsqueeze(1).repeat(1, t, 1, 1, 1)
    if policy.has_state:
        st = torch.as_tensor(np.asarray(observation["state"], dtype=np.float32))
        out["state"] = st.unsqueeze(1).repeat(1, t, 1)
    out["obs_mask"] = torch.ones(n, t, dtype=torch.bool)
    if policy.has_language:
        ids, mask = policy.processor.tokenize(list(observation["instruction"]), torch.device("cpu"))
        out["lang_ids"], out["lang_mask"] = ids, mask
    for k in PRESENT:
        out[k] = torch.as_tensor(np.asarray(observation.get(k, np.ones(n, dtype=bool)), dtype=bool))
    if policy.memory is not None:
        out["memory_in"] = torch.zeros(n, policy.cfg.d_model)
    return out


@dataclass
class ExportReport:
    path: Path
    sidecar: Path
    inputs: list[str]
    outputs: list[str]
    max_abs_diff: float
    action_agreement: float | None  # rows whose argmax actions agree (discrete/binned heads)
    checked_rows: int
    checked_steps: int


def export_onnx(policy: Any, out: str | Path, observations: list[dict[str, Any]], opset: int = 17) -> ExportReport:
    """Export ``policy``'s acting path to ``out`` and check it against PyTorch with onnxruntime on ``observations``
    (a sequence of acting steps of the same rows: the memory state is carried through them)."""
    check_exportable(policy)
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("ONNX export needs onnx and onnxruntime: pip install 'vla-foundry[onnx]'",
                                  name=exc.name) from None
    policy = policy.eval().cpu()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = ActingGraph(policy).eval()
    ex = example_inputs(policy, observations[0])
    names = list(ex)
    outputs = ["action_outputs"] + (["memory_out"] if policy.memory is not None else [])
    dynamic = {k: {0: "batch"} for k in names}
    for k in ("lang_ids", "lang_mask"):
        if k in dynamic:
            dynamic[k] = {0: "batch", 1: "tokens"}
    dynamic.update({k: {0: "batch"} for k in outputs})
    # The TorchScript exporter (tracing): the layers' data-dependent input checks (index ranges) run on the
    # example and are not part of the graph; torch.export (dynamo=True) refuses them as data-dependent guards.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Positional(graph, names), tuple(ex[k] for k in names), str(out), input_names=names,
                          output_names=outputs, dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    diff, agree, rows = 0.0, 0, 0
    h_ref = h_onnx = None
    for obs in observations:
        n = len(obs["instruction"])
        if h_ref is not None and h_ref.shape[0] != n:
            h_ref = h_onnx = None  # other rows: a new episode batch
        ref, h_next = _reference(policy, obs, h_ref)
        feeds = {k: v.numpy() for k, v in example_inputs(policy, obs).items()}
        if h_onnx is not None:
            feeds["memory_in"] = h_onnx
        got = sess.run(None, feeds)
        diff = max(diff, float(np.abs(ref.numpy() - got[0]).max()))
        if policy.memory is not None:
            diff = max(diff, float(np.abs(h_next.numpy() - got[1]).max()))
            h_ref, h_onnx = h_next, got[1]  # each side carries its own memory, as a deployed policy would
        if policy.head_kind != "continuous":
            same = ref.argmax(-1).numpy() == got[0].argmax(-1)
            agree += int(same.reshape(n, -1).all(axis=1).sum())
        rows += n
    sidecar = out.with_suffix(".json")
    meta = {"format": "vlafoundry-onnx", "version": 1, "model": out.name, "inputs": names, "outputs": outputs,
            "history": int(policy.cfg.history), "chunk": int(policy.cfg.chunk), "head": policy.head_kind,
            "memory": policy.cfg.memory, "d_model": int(policy.cfg.d_model),
            "action_selection": policy.cfg.action_selection, "sample_temperature": policy.cfg.sample_temperature,
            "processor": policy.processor.to_json(), "max_abs_diff": diff,
            "tokenisation": "outside the graph: lang_ids/lang_mask from processor.tokenizer (vlafoundry TextTokenizer "
                            "JSON), right-padded with its pad id"}
    sidecar.write_text(json.dumps(meta, indent=2))
    agreement = agree / max(rows, 1) if policy.head_kind != "continuous" else None
    return ExportReport(out, sidecar, names, outputs, diff, agreement, rows, len(observations))


@torch.no_grad()
def _reference(policy: Any, obs: dict[str, Any], h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The PyTorch policy's own acting computation (its processor included) for one step of every row."""
    t = int(policy.cfg.history)
    batch: dict[str, Any] = {"instruction": list(obs["instruction"])}
    if policy.has_image:
        batch["image"] = torch.as_tensor(np.asarray(obs["image"])).unsqueeze(1).repeat(1, t, 1, 1, 1)
    if policy.has_state:
        batch["state"] = torch.as_tensor(np.asarray(obs["state"], dtype=np.float32)).unsqueeze(1).repeat(1, t, 1)
    for k in PRESENT:
        if k in obs:
            batch[k] = np.asarray(obs[k])
    fused = policy.fuse(policy.encode(policy.prepare(batch)))
    if policy.memory is None:
        return policy.action_outputs(fused), None
    if h is None:
        h = torch.zeros(len(batch["instruction"]), policy.cfg.d_model)
    feats, h_next = policy.remember(fused, None, h)
    return policy.action_outputs(feats), h_next


def heldout_observations(policy: Any, env: str, rows: int = 16, steps: int = 12,
                         seed_start: int | None = None) -> list[dict[str, Any]]:
    """Observations of ``rows`` episodes with evaluation seeds (disjoint from training seeds by the BabyAI
    protocol: 10**9 on), stepped by the policy itself for up to ``steps`` steps (finished rows keep their last
    observation); every third row has its state marked missing, so the flags are exercised too."""
    from vlafoundry.envs import make_env
    from vlafoundry.envs.spec import EVAL_SEED_BASE

    start = EVAL_SEED_BASE if seed_start is None else seed_start
    envs = [make_env(env) for _ in range(rows)]
    try:
        raw = [e.reset(seed=start + i) for i, e in enumerate(envs)]
        done = [False] * rows
        out = []
        policy.reset()
        for _ in range(steps):
            obs: dict[str, Any] = {"instruction": [str(o["instruction"]) for o in raw],
                                   "state": np.stack([np.asarray(o["state"], dtype=np.float32) for o in raw]),
                                   "state_present": np.arange(rows) % 3 != 2}
            if policy.has_image:
                obs["image"] = np.stack([np.asarray(o["image"]) for o in raw])
            out.append(obs)
            actions = policy.select_action(obs)
            for i, e in enumerate(envs):
                if not done[i]:
                    o, _, term, trunc, _ = e.step(actions[i])
                    raw[i], done[i] = o, bool(term or trunc)
        policy.reset()
        return out
    finally:
        for e in envs:
            e.close()


def latency(policy: Any, path: str | Path, observation: dict[str, Any], repeats: int = 200) -> dict[str, float]:
    """Median ms per acting call of the exported graph in onnxruntime and of the same graph in PyTorch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph = ActingGraph(policy.eval()).eval()
    feeds = example_inputs(policy, observation)
    np_feeds = {k: v.numpy() for k, v in feeds.items()}

    with torch.no_grad():
        torch_ms = median_ms(lambda: graph(feeds), repeats)
    return {"onnxruntime_ms": median_ms(lambda: sess.run(None, np_feeds), repeats), "torch_ms": torch_ms}


def median_ms(fn: Any, repeats: int, warmup: int = 10) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


__all__ = ["ActingGraph", "ExportError", "ExportReport", "check_exportable", "example_inputs", "export_onnx",
           "latency", "median_ms"]
