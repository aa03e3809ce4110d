"""One deterministic pass of a policy over the held-out split: sample order, batches, eval mode, corrupted batches,
per-entry action scores and the collected :class:`OfflineOutputs` (actions, embeddings, ITM counts).

The measures computed from these outputs, and the module's overview, are in :mod:`vlafoundry.eval.offline` (every
public name here is importable from there as before); the modality-balance sums are
:mod:`vlafoundry.eval.offline_balance`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlafoundry.eval.rollout import ObservationCorruption

# ---------------------------------------------------------------------------------------------------- helpers


def policy_modalities(policy: Any) -> list[str]:
    """Input modalities the policy actually encodes, in ``("image", "instruction", "state")`` order."""
    flags = {"image": policy.has_image, "instruction": policy.has_language, "state": policy.has_state}
    return [m for m, on in flags.items() if on]


def _sample_order(n: int, max_samples: int | None, seed: int) -> np.ndarray:
    """Fixed permutation of ``range(n)`` (first ``max_samples`` of it)."""
    if n == 0:
        raise ValueError("dataset: expected at least one sample in the split, got 0")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples: expected >= 1 or None, got {max_samples}")
    order = np.random.default_rng(seed).permutation(n)
    return order if max_samples is None else order[:max_samples]


def _batches(dataset: Any, order: np.ndarray, batch_size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(number of dataset items, collated batch) for consecutive ``batch_size`` slices of ``order``."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    for start in range(0, len(order), batch_size):
        ids = order[start : start + batch_size].tolist()
        yield len(ids), dataset.__getitems__(ids)


class _EvalMode:
    """Policy in eval mode, torch's RNG forked and seeded; restores the mode afterwards."""

    def __init__(self, policy: Any, seed: int) -> None:
        self.policy, self.seed = policy, seed

    def __enter__(self) -> None:
        self.was_training = self.policy.training
        self.fork = torch.random.fork_rng(devices=[])
        self.fork.__enter__()
        torch.manual_seed(self.seed)
        self.policy.eval()

    def __exit__(self, *exc: Any) -> None:
        self.policy.train(self.was_training)
        self.fork.__exit__(*exc)


def corrupt_batch(batch: dict[str, Any], corruption: ObservationCorruption | None, rng: np.random.Generator,
                  view_seed: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Apply a robustness condition to a collated DemoDataset batch (a new dict; tensors are copied).

    Same semantics as in closed loop (:class:`~vlafoundry.eval.rollout.ObservationCorruption`): a removed modality
    gets ``<name>_present`` False and zeroed data (empty instruction); noise is drawn per sample (instruction) and
    per history frame (image, state) from ``rng``. The per-episode image draws (occluder, jitter, shift) come from
    a generator seeded by ``(view_seed, the sample's dataset episode)``, so every sample of an episode, in any
    batch, sees the same occluder, colours and offset (``view_seed`` None or no ``episode`` key: drawn from ``rng``
    per sample). History frames before the episode start (``obs_mask`` False) stay blank.
    """
    if corruption is None or corruption.is_identity:
        return batch
    out = dict(batch)
    n = len(batch["instruction"])
    instr, instr_present = [], torch.as_tensor(batch["instruction_present"]).clone()
    for i, text in enumerate(batch["instruction"]):
        new, present = corruption.corrupt_instruction(str(text), rng)
        instr.append(new)
        instr_present[i] &= present
    out["instruction"], out["instruction_present"] = instr, instr_present
    state = torch.as_tensor(batch["state"]).numpy().copy()  # (B, T, S)
    image = torch.as_tensor(batch["image"]).numpy().copy() if batch.get("image") is not None else None
    img_present = torch.as_tensor(batch["image_present"]).clone()
    st_present = torch.as_tensor(batch["state_present"]).clone()
    episodes = batch.get("episode") if view_seed is not None else None
    episodes = None if episodes is None else torch.as_tensor(episodes).reshape(-1).tolist()
    for i in range(n):
        params = None
        if image is not None and corruption.per_episode_view:
            ep_rng = rng if episodes is None else np.random.default_rng([int(view_seed), int(episodes[i])])
            params = corruption.frame_params(image.shape[2:], ep_rng)  # one frame: (H, W, C) or (K, H, W, C)
        for t in range(state.shape[1]):
            frame = image[i, t] if image is not None else None
            frame, st, ip, sp = corruption.corrupt_step(frame, state[i, t], rng, params)
            if image is not None:
                image[i, t] = frame
                img_present[i] &= ip
            state[i, t] = st
            st_present[i] &= sp
    if image is not None and corruption.pixels_only and batch.get("obs_mask") is not None:
        image[~torch.as_tensor(batch["obs_mask"]).numpy().astype(bool)] = 0
    out["state"], out["state_present"] = torch.from_numpy(state), st_present
    if image is not None:
        out["image"], out["image_present"] = torch.from_numpy(image), img_present
    return out


def _entry_scores(policy: Any, outputs: torch.Tensor, b: dict[str, Any]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per valid action entry: (sample index (M,), correct (M,) bool [discrete], error (M,) float).

    ``error`` is 1 - correct for discrete heads and the mean absolute error over action dims otherwise.
    """
    act, amask = b["action"], b["action_mask"].bool()
    if act.dim() == 1:
        act = act.unsqueeze(1)
    if amask.dim() == 1:
        amask = amask.unsqueeze(1)
    sample = torch.arange(amask.shape[0], device=amask.device).unsqueeze(1).expand_as(amask)[amask]  # (M,)
    correct, err = policy.action_head.entry_scores(outputs, act)  # the head decides: (B, K) each, correct or None
    err = err.to(amask.device).float()[amask]  # (M,)
    if correct is None:
        return sample, torch.zeros_like(err, dtype=torch.bool), err
    return sample, correct.to(amask.device)[amask], err


# ---------------------------------------------------------------------------------------------------- outputs


@dataclass
class OfflineOutputs:
    """Raw per-sample / per-entry outputs of one pass over the held-out split (all CPU).

    ``obs_emb``/``instr_emb``/``pair_ids`` are None when the policy has no language encoder or no observation
    modality (no retrieval then); ``itm`` holds counts ``matched_correct, matched, negative_correct, negative``.
    """

    head_kind: str
    indices: np.ndarray  # dataset indices in visiting order (steps; episodes for an EpisodeDataset)
    instructions: list[str]  # (N,) original (uncorrupted) instruction per sample
    task_ids: np.ndarray  # (N,)
    entry_sample: np.ndarray  # (M,) position (0..N-1) of each action entry's sample
    entry_correct: np.ndarray  # (M,) bool (discrete heads)
    entry_error: np.ndarray  # (M,) float
    obs_emb: torch.Tensor | None = None  # (N, E)
    instr_emb: torch.Tensor | None = None  # (N, E)
    pair_ids: torch.Tensor | None = None  # (N,)
    itm: dict[str, int] = field(default_factory=dict)

    @property
    def discrete(self) -> bool:
        return self.head_kind == "discrete"


class _Collector:
    """Accumulates :class:`OfflineOutputs` batch by batch (from the batch's encoder outputs and action outputs)."""

    def __init__(self, policy: Any, seed: int) -> None:
        self.policy = policy
        self.align = policy.has_language and (policy.has_image or policy.has_state)
        self.gen = torch.Generator().manual_seed(seed + 2)  # ITM hard negatives
        self.instructions: list[str] = []
        self.task_ids: list[torch.Tensor] = []
        self.ent: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
        self.obs_e: list[torch.Tensor] = []
        self.ins_e: list[torch.Tensor] = []
        self.pids: list[torch.Tensor] = []
        self.itm = {"matched_correct": 0, "matched": 0, "negative_correct": 0, "negative": 0}
        self.offset = 0

    @torch.no_grad()
    def add(self, b: dict[str, Any], enc: dict[str, Any], outputs: torch.Tensor) -> None:
        """One prepared batch ``b`` (N steps), its ``enc`` (policy.encode) and action ``outputs`` (N, K, ...)."""
        policy = self.policy
        self.instructions.extend(str(t) for t in b["instruction"])
        self.task_ids.append(torch.as_tensor(b["task_id"]).reshape(-1).cpu())
        s, c, e = _entry_scores(policy, outputs, b)
        self.ent[0].append(s.cpu() + self.offset)
        self.ent[1].append(c.cpu())
        self.ent[2].append(e.cpu())
        if self.align:
            obs_p = policy.pooled_observation(enc)  # (N, D)
            lang_p = policy.pooled_instruction(enc)  # (N, D)
            ov, lv = policy.obs_embed(obs_p), policy.instr_embed(lang_p)  # (N, E)
            pair = b["instruction_id"].long().reshape(-1)  # (N,)
            self.obs_e.append(ov.float().cpu())
            self.ins_e.append(lv.float().cpu())
            self.pids.append(pair.cpu())
            _itm_counts(policy, obs_p, lang_p, ov, lv, pair, self.gen, self.itm)
        self.offset += len(b["instruction"])

    def result(self, order: np.ndarray) -> OfflineOutputs:
        align = self.align
        return OfflineOutputs(
            head_kind=self.policy.head_kind,
            indices=order,
            instructions=self.instructions,
            task_ids=torch.cat(self.task_ids).numpy(),
            entry_sample=torch.cat(self.ent[0]).numpy(),
            entry_correct=torch.cat(self.ent[1]).numpy(),
            entry_error=torch.cat(self.ent[2]).double().numpy(),
            obs_emb=torch.cat(self.obs_e) if align else None,
            instr_emb=torch.cat(self.ins_e) if align else None,
            pair_ids=torch.cat(self.pids) if align else None,
            itm=self.itm if align else {},
        )


def _bar(total: int, label: str | None) -> Any:
    from vlafoundry.progress import progress

    return progress(total, label or "", "items", enabled=label is not None)


@torch.no_grad()
def collect_offline_outputs(
    policy: Any,
    dataset: Any,
    batch_size: int = 256,
    max_samples: int | None = None,
    corruption: ObservationCorruption | None = None,
    seed: int = 0,
    progress: str | None = None,
) -> OfflineOutputs:
    """One deterministic pass of ``policy`` over ``dataset`` (optionally corrupted): actions, embeddings, ITM.

    ``progress``: a label under which dataset items done / total are shown (None: silent).
    """
    order = _sample_order(len(dataset), max_samples, seed)
    rng = np.random.default_rng(seed + 1)  # corruption noise
    col = _Collector(policy, seed)
    with _EvalMode(policy, seed), _bar(len(order), progress) as bar:
        for k, raw in _batches(dataset, order, batch_size):
            b = policy.prepare(corrupt_batch(raw, corruption, rng, view_seed=seed + 3))  # episodes (EpisodeDataset) become steps
            enc = policy.encode(b)
            col.add(b, enc, policy.action_outputs(policy.features(enc)))
            bar.update(k)
    return col.result(order)


def _itm_counts(policy: Any, obs_p: torch.Tensor, lang_p: torch.Tensor, ov: torch.Tensor, lv: torch.Tensor,
                pair: torch.Tensor, gen: torch.Generator, counts: dict[str, int]) -> None:  # fmt: skip
    """Matched pairs and hard negatives (both directions, as in training) scored by the ITM head."""
    heads = policy.pretrain_heads
    sim = policy.contrastive.similarity(ov, lv).cpu()  # (B, B)
    neg_text = heads.mine_hard_negatives(sim, pair.cpu(), gen).to(obs_p.device)  # (B,)
    neg_image = heads.mine_hard_negatives(sim.T, pair.cpu(), gen).to(obs_p.device)
    rows = torch.arange(obs_p.shape[0], device=obs_p.device)
    ok_t, ok_i = neg_text >= 0, neg_image >= 0
    matched = heads.itm_logits(obs_p, lang_p).argmax(-1) == 1  # (B,)
    v_idx = torch.cat([rows[ok_t], neg_image[ok_i]])
    l_idx = torch.cat([neg_text[ok_t], rows[ok_i]])
    negative = heads.itm_logits(obs_p[v_idx], lang_p[l_idx]).argmax(-1) == 0  # (P,)
    counts["matched_correct"] += int(matched.sum())
    counts["matched"] += int(matched.numel())
    counts["negative_correct"] += int(negative.sum())
    counts["negative"] += int(negative.numel())
