"""Offline evaluation on a held-out split of demonstrations: action accuracy / error, observation-instruction
retrieval, ITM accuracy, modality balance, per-subgroup accuracy (bias) and offline robustness rows.

Everything here runs a :class:`~vlafoundry.models.VLAPolicy` on batches of a
:class:`~vlafoundry.data.DemoDataset` (normally ``split="val"`` with the checkpoint's ``val_fraction`` and
``split_seed``) in eval mode. Samples are visited in a fixed permutation drawn from ``seed`` (so batches mix
episodes and the ITM head sees hard negatives from several instructions); torch's global RNG is forked and seeded,
and hard negatives use a seeded ``torch.Generator``, so every function is deterministic for a fixed ``seed``.

Measures (one *action entry* = one valid step of an action chunk; ``action_mask`` False entries are skipped):

* ``action_acc`` (discrete heads): fraction of entries whose greedy action equals the expert's;
  ``action_l1`` (continuous / binned heads): mean over entries of the mean absolute error over action dimensions.
* retrieval recall@k both ways between the policy's observation and instruction embeddings
  (:meth:`VLAPolicy.embed`): every step with the same ``instruction_id`` counts as a positive
  (:meth:`MultimodalEvaluator.evaluate_alignment` with ``pair_ids``).
  Queries that share an instruction share a positive set, so with many steps per instruction chance level is
  high (with the instruction removed, every instruction query is the same vector and ``instr_to_obs_r@1`` becomes
  the share of samples whose instruction is that of the single top-ranked observation).
* ITM accuracy: the policy's image-text-matching head on each sample's matched pair and on hard negatives mined
  within the batch from the embedding similarities (as in training). Only meaningful for checkpoints trained with an
  ITM objective (alignment pretraining or ``loss.itm > 0``); an untrained head scores about chance.
* :func:`modality_balance` (ablation and gradient shares per modality), :func:`offline_bias` (accuracy per subgroup
  with Wilson intervals and the worst-to-best gap) and :func:`offline_robustness_fn` (offline columns for
  :func:`~vlafoundry.eval.robustness.run_robustness`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlafoundry.eval.evaluator import MultimodalEvaluator
from vlafoundry.eval.rollout import ObservationCorruption
from vlafoundry.eval.stats import wilson_interval
from vlafoundry.eval.subgroups import mission_subgroups

__all__ = [
    "ROBUSTNESS_KEYS",
    "OfflineOutputs",
    "collect_offline_outputs",
    "corrupt_batch",
    "metrics_from_outputs",
    "modality_balance",
    "offline_bias",
    "offline_evaluation",
    "offline_metrics",
    "offline_robustness_fn",
    "policy_modalities",
    "subgroup_keys",
]

TOP_K: tuple[int, ...] = (1, 5, 10)
# Policy encoder outputs (VLAPolicy.encode keys) of each modality: (tokens, mask).
_ENC_KEYS: dict[str, tuple[str, str]] = {
    "image": ("vision", "vision_mask"),
    "instruction": ("lang", "lang_mask"),
    "state": ("state", "state_mask"),
}
# Short names of the metrics added to robustness rows by offline_robustness_fn.
ROBUSTNESS_KEYS: tuple[str, ...] = ("action_acc", "action_l1", "obs_to_instr_r@1", "instr_to_obs_r@1", "itm_acc")


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


# ---------------------------------------------------------------------------------------------------- metrics


def metrics_from_outputs(out: OfflineOutputs, top_k: Sequence[int] = TOP_K) -> dict[str, float]:
    """The offline metric dict (see :func:`offline_metrics`) from collected outputs."""
    res: dict[str, float] = {"samples": float(len(out.instructions)), "action_entries": float(len(out.entry_error))}
    if out.discrete:
        res["action_acc"] = float(out.entry_correct.mean()) if len(out.entry_correct) else float("nan")
    else:
        res["action_l1"] = float(out.entry_error.mean()) if len(out.entry_error) else float("nan")
    if out.obs_emb is not None:
        al = MultimodalEvaluator().evaluate_alignment(out.obs_emb, out.instr_emb, top_k=tuple(top_k),
                                                      pair_ids=out.pair_ids)  # fmt: skip
        for k, v in al.items():
            res[k.replace("image_to_text", "obs_to_instr").replace("text_to_image", "instr_to_obs")] = v
        res["distinct_instructions"] = float(len(torch.unique(out.pair_ids)))
        c = out.itm
        if c["matched"]:
            res["itm_acc"] = (c["matched_correct"] + c["negative_correct"]) / (c["matched"] + c["negative"])
            res["itm_acc_matched"] = c["matched_correct"] / c["matched"]
            if c["negative"]:
                res["itm_acc_negative"] = c["negative_correct"] / c["negative"]
                res["itm_balanced_acc"] = 0.5 * (res["itm_acc_matched"] + res["itm_acc_negative"])
    return res


def offline_metrics(
    policy: Any,
    dataset: Any,
    batch_size: int = 256,
    max_samples: int | None = None,
    corruption: ObservationCorruption | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Offline metrics of ``policy`` on ``dataset`` (the held-out split), optionally under a ``corruption``.

    Returns floats: ``samples``, ``action_entries``; ``action_acc`` (discrete head) or ``action_l1`` (continuous /
    binned); when the policy has language and an observation modality also ``obs_to_instr_r@{1,5,10}``,
    ``instr_to_obs_r@{1,5,10}``, ``obs_to_instr_median_rank``, ``instr_to_obs_median_rank``,
    ``distinct_instructions``, ``itm_acc`` (over matched pairs and hard negatives, as the training metric),
    ``itm_acc_matched``, ``itm_acc_negative`` and ``itm_balanced_acc``. ITM numbers are meaningful only for a
    checkpoint trained with an ITM objective. Deterministic for a fixed ``seed``.
    """
    return metrics_from_outputs(collect_offline_outputs(policy, dataset, batch_size, max_samples, corruption, seed))


def offline_robustness_fn(
    policy: Any,
    dataset: Any,
    batch_size: int = 256,
    max_samples: int | None = None,
    seed: int = 0,
    keys: Sequence[str] = ROBUSTNESS_KEYS,
) -> Callable[[ObservationCorruption], dict[str, float]]:
    """``offline_fn`` for :func:`~vlafoundry.eval.robustness.run_robustness`: the offline metrics of one condition,
    restricted to ``keys`` (those that exist for this policy) and prefixed ``offline `` for the table."""

    def fn(corruption: ObservationCorruption) -> dict[str, float]:
        m = offline_metrics(policy, dataset, batch_size, max_samples, corruption, seed)
        return {f"offline {k}": m[k] for k in keys if k in m}

    return fn


# ---------------------------------------------------------------------------------------------------- balance


def modality_balance(
    policy: Any,
    dataset: Any,
    batch_size: int = 256,
    max_samples: int | None = 4096,
    loss_cfg: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """How much the policy's actions depend on each modality, with the evaluator's two measures.

    Per batch, the encoders run once; the fusion (and memory) and action head then run on the modality token
    features (the encoder outputs fed to the fusion), removing a modality by marking all its tokens absent (what
    ``<name>_present=False`` does inside the policy). The measures are those of
    :meth:`MultimodalEvaluator.assess_modality_balance`, summed exactly over batches:

    * **ablation**: the held-out action metric with every modality vs with one removed. ``ablation_drop[m]`` is the
      drop in ``action_acc`` (discrete) or the rise in ``action_l1`` (continuous) caused by removing m (positive =
      the policy needs m); ``ablation_share[m] = |drop_m| / sum_j |drop_j|``. The same on the behaviour-cloning
      loss: ``loss_ablated``, ``loss_ablation_share``.
    * **gradient**: ``gradient_norm[m]`` = L2 norm of d(BC loss averaged over the split)/d(token features of m),
      over all its tokens and samples; ``gradient_share`` normalises these to sum to 1, and
      ``gradient_x_input_share`` uses ``||x * grad||`` (invariant to rescaling a modality's features).

    Shares are over the modalities the policy encodes (``modalities``); ``dominant_modality`` is the argmax of
    ``ablation_share`` (of ``loss_ablation_share`` when no removal changes the action metric). Cost per batch:
    the encoders once, one forward and backward of fusion + heads with every modality, one forward without each
    modality. :func:`offline_evaluation` gets the same numbers within its pass of the offline metrics.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples: expected >= 1 or None, got {max_samples}")
    _, balance = offline_evaluation(policy, dataset, batch_size=batch_size, max_samples=max_samples,
                                    balance_samples=max_samples, loss_cfg=loss_cfg, seed=seed,
                                    outputs=False)  # fmt: skip
    assert balance is not None
    return balance


def offline_evaluation(
    policy: Any,
    dataset: Any,
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
    balance_samples: int | None = 4096,
    loss_cfg: Any = None,
    seed: int = 0,
    outputs: bool = True,
    progress: str | None = None,
) -> tuple[OfflineOutputs | None, dict[str, Any] | None]:
    """The offline outputs (:func:`collect_offline_outputs`) and modality balance (:func:`modality_balance`) from
    ONE pass over the held-out split: the balance reuses the encoders and the full-input forward of the outputs.

    The balance covers the first ``balance_samples`` items of the visiting order (0: no balance; None: all), which
    are the first items the outputs see too; the outputs cover the first ``max_samples`` (``outputs=False``: only
    the balance's items, no outputs). Returns ``(outputs or None, balance or None)``.
    """
    from vlafoundry.models import LossConfig

    if balance_samples is not None and balance_samples < 0:
        raise ValueError(f"balance_samples: expected >= 0 or None, got {balance_samples}")
    lc = loss_cfg or LossConfig()
    order = _sample_order(len(dataset), max_samples, seed)
    n_bal = len(order) if balance_samples is None else min(balance_samples, len(order))
    visit = order if outputs else order[:n_bal]
    mods = policy_modalities(policy)
    acc = _BalanceSums(mods) if n_bal else None
    col = _Collector(policy, seed) if outputs else None
    with _EvalMode(policy, seed), _bar(len(visit), progress) as bar:
        # the balance's items first, in batches of their own (so a batch never mixes the two)
        for part, in_balance in ((visit[:n_bal], acc is not None), (visit[n_bal:], False)):
            for k, raw in _batches(dataset, part, batch_size):
                b = policy.prepare(raw)
                with torch.no_grad():
                    enc = policy.encode(b)
                if in_balance:
                    out = _balance_batch(policy, b, enc, mods, lc, acc)
                else:
                    with torch.no_grad():
                        out = policy.action_outputs(policy.features(enc))
                if col is not None:
                    col.add(b, enc, out)
                bar.update(k)
    balance = None
    if acc is not None:
        if acc.entries == 0:
            raise ValueError("dataset: no valid action entries in the selected samples")
        balance = _balance_summary(acc, policy.head_kind == "discrete", n_bal)
        if "image" in mods:  # what the image is, for the report's labels: a symbolic grid or RGB pixels
            vision = getattr(getattr(policy, "cfg", None), "vision", None)
            balance["image_input"] = "symbolic" if vision == "grid" else "rgb"
    return (col.result(order) if col is not None else None), balance


@dataclass
class _BalanceSums:
    """Split-level sums of the per-batch balance measures (all additive, or additive in squares)."""

    mods: list[str]
    entries: int = 0
    score_full: float = 0.0  # correct count (discrete) or summed L1
    loss_full: float = 0.0  # entry-weighted BC loss
    score_abl: dict[str, float] = field(default_factory=dict)
    loss_abl: dict[str, float] = field(default_factory=dict)
    grad2: dict[str, float] = field(default_factory=dict)  # sum of (entries_b * ||grad of batch-mean loss||)^2
    gxi2: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for d in (self.score_abl, self.loss_abl, self.grad2, self.gxi2):
            d.update(dict.fromkeys(self.mods, 0.0))


def _task_score(policy: Any, outputs: torch.Tensor, b: dict[str, Any]) -> float:
    """Additive over batches: the number of correct entries (discrete) or the summed L1 error."""
    _, correct, err = _entry_scores(policy, outputs, b)
    return float(correct.sum()) if policy.head_kind == "discrete" else float(err.sum())


def _balance_batch(policy: Any, b: dict[str, Any], enc: dict[str, Any], mods: list[str], lc: Any,
                   acc: _BalanceSums) -> torch.Tensor:  # fmt: skip
    """Both measures on one prepared batch ``b`` with encoder outputs ``enc``, added to ``acc``.

    Returns the full-input action outputs (N, K, ...) (detached), which the offline outputs reuse.
    """
    w = int(b["action_mask"].sum())
    leaves = {m: enc[_ENC_KEYS[m][0]].detach().requires_grad_(True) for m in mods}  # token features (N, T_m, D)
    with torch.enable_grad():
        fused = policy.features({**enc, **{_ENC_KEYS[m][0]: x for m, x in leaves.items()}})  # (N, D)
        loss = policy.bc_loss(fused, b, lc)[0]  # batch-mean BC loss
        grads: tuple[torch.Tensor | None, ...] = (None,) * len(mods)
        if w and loss.requires_grad:
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    fused = fused.detach()
    with torch.no_grad():
        outputs = policy.action_outputs(fused)  # (N, K, ...)
    if w == 0:
        return outputs
    acc.entries += w
    acc.score_full += _task_score(policy, outputs, b)
    acc.loss_full += w * float(loss.detach())
    with torch.no_grad():
        for (m, x), g in zip(leaves.items(), grads, strict=True):
            mask = _ENC_KEYS[m][1]
            ablated = policy.features({**enc, mask: torch.zeros_like(enc[mask])})  # (N, D); = <m>_present False
            acc.score_abl[m] += _task_score(policy, policy.action_outputs(ablated), b)
            acc.loss_abl[m] += w * float(policy.bc_loss(ablated, b, lc)[0])
            # gradient of the split-mean loss = (w / entries) * gradient of the batch-mean loss; / entries at the end
            acc.grad2[m] += (w * (0.0 if g is None else float(g.norm()))) ** 2
            acc.gxi2[m] += (w * (0.0 if g is None else float((g * x.detach()).norm()))) ** 2
    return outputs


def _balance_summary(acc: _BalanceSums, discrete: bool, samples: int) -> dict[str, Any]:
    shares = MultimodalEvaluator._shares
    mods, n = acc.mods, acc.entries
    full = acc.score_full / n
    ablated = {m: acc.score_abl[m] / n for m in mods}
    drop = {m: (full - ablated[m]) if discrete else (ablated[m] - full) for m in mods}
    l_full = acc.loss_full / n
    l_abl = {m: acc.loss_abl[m] / n for m in mods}
    grad = {m: float(np.sqrt(acc.grad2[m])) / n for m in mods}
    gxi = {m: float(np.sqrt(acc.gxi2[m])) / n for m in mods}
    out: dict[str, Any] = {
        "metric": "action_acc" if discrete else "action_l1",
        "samples": samples,
        "action_entries": n,
        "modalities": mods,
        "metric_full": full,
        "metric_ablated": ablated,
        "ablation_drop": drop,
        "ablation_share": shares({m: abs(v) for m, v in drop.items()}),
        "loss_full": l_full,
        "loss_ablated": l_abl,
        "loss_ablation_share": shares({m: abs(l_abl[m] - l_full) for m in mods}),
        "gradient_norm": grad,
        "gradient_share": shares(grad),
        "gradient_x_input_share": shares(gxi),
    }
    key = "ablation_share" if any(out["ablation_share"].values()) else "loss_ablation_share"
    out["dominant_modality"] = max(out[key], key=out[key].get) if mods else None
    return out


# ---------------------------------------------------------------------------------------------------- bias


def subgroup_keys(env_name: str) -> tuple[str, ...]:
    """Subgroup labellings for an environment, from its family (BabyAI missions parse into template / object /
    colour and task; Meta-World groups by task)."""
    from vlafoundry.envs import get_family

    return tuple(get_family(env_name).subgroup_keys)


def offline_bias(
    policy: Any,
    dataset: Any,
    batch_size: int = 256,
    max_samples: int | None = None,
    keys: Sequence[str] | None = None,
    tolerance: float = 0.1,
    seed: int = 0,
    outputs: OfflineOutputs | None = None,
) -> dict[str, Any]:
    """Held-out action accuracy per subgroup with 95% Wilson intervals and the worst-to-best gap.

    Groups come from :func:`~vlafoundry.eval.subgroups.mission_subgroups` of each sample's instruction and its
    task name (``keys`` default: :func:`subgroup_keys` of the dataset's env). Discrete heads: an action entry is
    correct when it equals the expert's; continuous heads: when its mean absolute error is at most ``tolerance``
    (per-group ``mean_l1`` is reported too). Uses :meth:`MultimodalEvaluator.detect_multimodal_bias`.

    Returns ``{"measure", "entries", "by": {key: {"groups": [{"group", "n", "correct", "accuracy", "ci_low",
    "ci_high"[, "mean_l1"]}], "worst", "best", "gap"}}}`` with groups sorted by name. ``outputs`` reuses a pass of
    :func:`collect_offline_outputs`.
    """
    out = outputs if outputs is not None else collect_offline_outputs(policy, dataset, batch_size, max_samples,
                                                                        seed=seed)  # fmt: skip
    keys = tuple(keys) if keys is not None else subgroup_keys(getattr(dataset, "env_name", ""))
    tasks = list(getattr(dataset, "tasks", []))
    labels = [
        mission_subgroups(text, tasks[t] if 0 <= t < len(tasks) else str(t))
        for text, t in zip(out.instructions, out.task_ids.tolist(), strict=True)
    ]
    correct = out.entry_correct if out.discrete else out.entry_error <= tolerance
    if len(correct) == 0:
        raise ValueError("dataset: no valid action entries in the selected samples")
    ev = MultimodalEvaluator()
    by: dict[str, Any] = {}
    for key in keys:
        groups = [labels[s][key] for s in out.entry_sample.tolist()]
        res = ev.detect_multimodal_bias(correct.tolist(), [True] * len(correct), groups)
        rows = []
        for name in sorted(res["per_group"]):
            g = res["per_group"][name]
            row = {"group": name, "n": g["n"], "correct": int(round(g["accuracy"] * g["n"])),
                   "accuracy": g["accuracy"], "ci_low": float(g["ci"][0]), "ci_high": float(g["ci"][1])}  # fmt: skip
            if not out.discrete:
                sel = np.asarray([grp == name for grp in groups])
                row["mean_l1"] = float(out.entry_error[sel].mean())
            rows.append(row)
        by[key] = {"groups": rows, "worst": res["worst"], "best": res["best"], "gap": float(res["gap"])}
    measure = "action accuracy" if out.discrete else f"fraction of actions with mean |error| <= {tolerance:g}"
    low, high = wilson_interval(int(correct.sum()), len(correct))
    return {"measure": measure, "entries": int(len(correct)), "overall": float(correct.mean()),
            "overall_ci": [low, high], "by": by}  # fmt: skip
