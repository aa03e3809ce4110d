"""The training objectives of a VLA policy: behaviour cloning plus the chapter's alignment objectives.

``VLAObjectives.forward(batch, loss_cfg)`` is one training/validation step's weighted loss:

* ``bc`` -- behaviour cloning through the action head (:mod:`vlafoundry.models.components`);
* ``contrastive`` -- observation-instruction InfoNCE (positives: samples with the same instruction);
* ``itm`` -- image(observation)-text matching with hard negatives mined from those similarities;
* ``mlm`` -- masked instruction tokens; ``mrm`` -- masked image cells/patches;
* ``grounding`` -- with ``model.grounding``, each cell's per-attribute match score against whether the instruction
  names the cell's object type / colour (:meth:`~vlafoundry.nn.AttributeMatching.loss_terms`);
* ``cells`` -- with ``model.cell_labels``, each patch token predicts the labels of the cell it shows (UNITER's
  region classification, with the simulator's symbols as the labels; ``b["cell_labels"]``);
* ``positions`` -- with ``model.position_labels``, the vision CLS token regresses where the objects and the goal are
  (standardised coordinates from a replay of the demonstrations; ``b["position_labels"]``);
* ``moe_aux`` -- the mixture-of-experts load-balancing loss, when the policy has experts.

Metrics are detached 0-d tensors (the trainer reduces them when it logs): no host sync per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlafoundry.config import require
from vlafoundry.nn.losses import mean_count_over_ranks
from vlafoundry.nn.matching import AttributeMatching, named_values
from vlafoundry.nn.moe import MultimodalMixtureOfExperts
from vlafoundry.nn.vision import CELL_LABEL_CLASSES


@dataclass
class LossConfig:
    """Weights of each objective (0 disables it) and their settings."""

    bc: float = 1.0
    contrastive: float = 0.0
    itm: float = 0.0
    mlm: float = 0.0
    mrm: float = 0.0
    grounding: float = 0.0
    cells: float = 0.0
    positions: float = 0.0
    moe_aux: float = 0.01
    temperature: float = 0.07
    learnable_temperature: bool = True
    continuous: str = "l1"
    label_smoothing: float = 0.0
    align_last: int = 0

    def __post_init__(self) -> None:
        for k in ("bc", "contrastive", "itm", "mlm", "mrm", "grounding", "cells", "positions", "moe_aux"):
            require(getattr(self, k) >= 0, f"loss.{k}", "a weight >= 0", getattr(self, k))
        require(self.temperature > 0, "loss.temperature", "a number > 0", self.temperature)
        require(self.continuous in ("l1", "mse"), "loss.continuous", "one of ['l1', 'mse']", self.continuous)
        require(0 <= self.label_smoothing < 1, "loss.label_smoothing", "a number in [0, 1)", self.label_smoothing)
        require(isinstance(self.align_last, int) and self.align_last >= 0, "loss.align_last",
                "an integer >= 0 (0 = every step)", self.align_last)


def _m(t: torch.Tensor) -> torch.Tensor:
    """A metric value: a detached 0-d tensor."""
    return t.detach()


class VLAObjectives:
    """Mixin of :class:`~vlafoundry.models.vla.VLAPolicy`: the losses (it reads the policy's encoders and heads)."""

    def loss_denominator(self, count: torch.Tensor) -> torch.Tensor:
        """How many loss terms (action entries, masked tokens / patches, ITM pairs) to average a summed loss over.
        In DDP training: the mean count over ranks, so that DDP's gradient average equals one process's mean over
        the global batch even when ranks hold different numbers of terms (whole episodes of different lengths,
        random masks). Otherwise this rank's count."""
        if self.training:
            return mean_count_over_ranks(count)
        return count.detach().float().clamp_min(1)

    def global_mean(self, losses: torch.Tensor) -> torch.Tensor:
        """(M,) per-term losses -> scalar: their sum over :meth:`loss_denominator` (zero, with graph, when M = 0)."""
        return losses.sum() / self.loss_denominator(torch.tensor(losses.numel(), device=losses.device))

    def bc_loss(self, fused: torch.Tensor, b: dict[str, Any], loss_cfg: Any) -> tuple[torch.Tensor, dict]:
        """Behaviour cloning on features (B, D) against ``b["action"]`` (B, K[, A]) masked by ``action_mask``."""
        out = self.action_outputs(fused)
        act, amask = b["action"], b["action_mask"]
        if act.dim() == 1:
            act = act.unsqueeze(1)
        if amask.dim() == 1:
            amask = amask.unsqueeze(1)
        w = amask.float()  # (B, K)
        loss = (self.action_head.entry_loss(out, act, loss_cfg) * w).sum() / self.loss_denominator(w.sum())
        correct, err = self.action_head.entry_scores(out, act)
        n = w.sum().clamp_min(1)
        if correct is not None:
            return loss, {"action_acc": _m((correct.float() * w).sum() / n)}
        return loss, {"action_l1": _m((err * w).sum() / n)}

    def moe_aux_loss(self) -> torch.Tensor | None:
        losses = [m.aux_loss for m in self.modules()
                  if isinstance(m, MultimodalMixtureOfExperts) and getattr(m, "aux_loss", None) is not None]
        return torch.stack(losses).mean() if losses else None

    def grounding_targets(self, instructions: list[str]) -> list[torch.Tensor]:
        """Per instruction, which values of each grounded attribute it names: A tensors (B, V_a) bool on the device
        (the words of each distinct instruction are read once and cached)."""
        cache = self.__dict__.setdefault("_named_cache", {})
        names = self.vision_encoder.attribute_names
        index: dict[str, int] = {}
        rows = torch.tensor([index.setdefault(s, len(index)) for s in instructions], device=self.device)  # (B,)
        missing = [s for s in index if s not in cache]
        if missing:
            parts = [named_values(missing, n) for n in names]  # A x (M, V_a)
            for i, s in enumerate(missing):
                cache[s] = [p[i] for p in parts]
        tables = [torch.stack([cache[s][a] for s in index]).to(self.device) for a in range(len(names))]  # (U, V_a)
        return [t[rows] for t in tables]  # A x (B, V_a)

    def grounding_loss(self, b: dict[str, Any], enc: dict[str, Any]) -> torch.Tensor:
        """Binary cross-entropy of each cell's per-attribute match (``extras["grounding_scores"]`` (B*T, N, A))
        against whether the instruction names the cell's object type / colour; colour only on cells of the objects
        instructions name by colour, only frames that are present and whose instruction is present."""
        ex = enc["extras"]
        scores, idx = ex["grounding_scores"], ex["grounding_cells"]  # (B*T, N, A), (B*T, H*W, 2) object, colour
        bt, n, _ = scores.shape
        t = bt // len(b["instruction"])
        scores = scores[:, n - idx.shape[1]:]  # drop a CLS slot if the encoder has one
        named = [v.repeat_interleave(t, dim=0) for v in self.grounding_targets(list(b["instruction"]))]  # (B*T, V_a)
        targets = torch.stack([named[a].gather(1, idx[..., a]) for a in range(2)], dim=-1)  # (B*T, H*W, 2)
        coloured = self.vision_encoder.coloured_objects()[idx[..., 0]]  # (B*T, H*W)
        frame = (b["obs_mask"] & b["image_present"].unsqueeze(1) & b["instruction_present"].unsqueeze(1))
        keep = frame.reshape(bt, 1).expand(bt, idx.shape[1])  # (B*T, H*W)
        mask = torch.stack([keep, keep & coloured], dim=-1)  # (B*T, H*W, 2)
        return self.global_mean(AttributeMatching.loss_terms(scores, targets, mask))

    def cell_loss(self, b: dict[str, Any], enc: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of each patch token's per-attribute class scores (``cell_head``) against its cell's labels
        ``b["cell_labels"]`` (B, T, R, C, A) int (-1: unknown, ignored), summed over the A attributes and averaged
        over the labelled (cell, attribute) terms of frames that are present. Metric ``cells_acc``: the share of
        labelled cells with every attribute right."""
        if "cell_labels" not in b:
            raise ValueError("loss.cells > 0: expected the batch to carry 'cell_labels' (the trainer adds them from "
                             "the env family's labeller, EnvFamily.cell_labels); got none")
        tokens = enc["extras"]["vision_tokens"]  # (B*T, 1+R*C, D), CLS first
        bt, rc = tokens.shape[0], tokens.shape[1] - 1
        labels = b["cell_labels"].to(tokens.device, torch.long)
        classes = CELL_LABEL_CLASSES[self.cfg.cell_labels]
        if labels.numel() != bt * rc * len(classes):
            raise ValueError(f"cell_labels: expected {bt} frames of {rc} cells x {len(classes)} labels, got shape "
                             f"{tuple(labels.shape)}")
        labels = labels.reshape(bt, rc, len(classes))  # (B*T, R*C, A)
        logits = enc["extras"].get("cell_logits")  # computed by encode with model.cell_tokens
        if logits is None:
            logits = self.cell_head(tokens[:, 1:])  # (B*T, R*C, sum(classes))
        frame = (b["obs_mask"] & b["image_present"].unsqueeze(1)).reshape(bt, 1, 1)  # (B*T, 1, 1)
        valid = (labels >= 0) & frame  # (B*T, R*C, A)
        terms, right = [], valid.new_ones(bt, rc)
        for a, part in enumerate(logits.split(list(classes), dim=-1)):  # (B*T, R*C, C_a)
            keep = valid[..., a]
            terms.append(nn.functional.cross_entropy(part[keep], labels[..., a][keep], reduction="none"))
            right = right & ((part.argmax(-1) == labels[..., a]) | ~keep)
        loss = self.global_mean(torch.cat(terms))
        cells = valid.any(-1)  # (B*T, R*C)
        acc = (right & cells).sum().float() / cells.sum().clamp_min(1)
        return loss, {"cells_acc": _m(acc)}

    def position_loss(self, b: dict[str, Any], enc: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean squared error of the position head's prediction from the latest frame's CLS token against
        ``b["position_labels"]`` (B, P) (standardised coordinates), over rows whose latest frame is present. Metric
        ``positions_l1``: the mean absolute error, in standard deviations."""
        if "position_labels" not in b:
            raise ValueError("loss.positions > 0: expected the batch to carry 'position_labels' (the trainer adds them "
                             "from a replay of the demonstrations, EnvFamily.position_labels); got none")
        pred = enc["extras"].get("position_pred")  # (B, T, P), computed by encode with model.position_tokens
        if pred is None:
            pred = self.position_head(enc["extras"]["vision_cls"])  # (B, T, P)
        pred = pred[:, -1]  # (B, P) the latest frame
        labels = b["position_labels"].to(pred.device, pred.dtype)
        if labels.shape != pred.shape:
            raise ValueError(f"position_labels: expected shape {tuple(pred.shape)} (rows, coordinates), got "
                             f"{tuple(labels.shape)}")
        keep = b["obs_mask"][:, -1] & b["image_present"]  # (B,)
        err = pred[keep] - labels[keep]  # (B', P)
        loss = self.global_mean((err**2).mean(-1))
        return loss, {"positions_l1": _m(err.abs().mean() if err.numel() else err.new_zeros(()))}

    def pair_ids(self, b: dict[str, Any]) -> torch.Tensor:
        """Samples that share an instruction are positives of each other."""
        if "instruction_id" in b:
            return b["instruction_id"].long().reshape(-1)
        index: dict[str, int] = {}
        ids = [index.setdefault(s, len(index)) for s in b["instruction"]]
        return torch.tensor(ids, device=self.device)

    def alignment_rows(self, b: dict[str, Any], lc: Any) -> torch.Tensor | None:
        """(B,) bool: the steps the contrastive and ITM objectives align, each episode's last ``loss.align_last``
        steps; None (every step) when ``align_last`` is 0. Positions come from the episode batch's ``seq`` or, for
        a batch of single steps, from its ``steps_left`` (0 on an episode's last step); a batch of single steps
        with none of them among the last ``align_last`` keeps those nearest their episode's end (never empty)."""
        k = int(lc.align_last)
        if k == 0:
            return None
        if b.get("seq") is not None:
            rows, pos, n_ep, _ = b["seq"]
            left = torch.bincount(rows, minlength=n_ep)[rows] - 1 - pos  # (B,) steps after this one
        elif "steps_left" in b:
            left = b["steps_left"].reshape(-1)
        else:
            raise ValueError(f"loss.align_last={k} needs each step's place in its episode: a batch of episodes "
                             "(seq_mask) or 'steps_left' per step (DemoDataset gives it); got neither")
        return left <= max(k - 1, int(left.min())) if left.numel() else left < k

    def forward(self, batch: dict[str, Any], loss_cfg: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training/validation step's loss: behaviour cloning plus the weighted alignment objectives."""
        lc = loss_cfg or LossConfig()
        b = self.prepare(batch)  # modalities dropped here in training
        want_mrm = lc.mrm > 0 and self.has_image and self.training
        want_mlm = lc.mlm > 0 and self.cfg.language == "scratch"
        lang_ids = lang_mask = mlm_labels = None
        if want_mlm:
            ids, mask = self.tokenize(b["instruction"])  # (B, L)
            lang_ids, mlm_labels = self.pretrain_heads.mask_tokens(
                ids, mask, self.tokenizer.mask_id, self.tokenizer.vocab_size, self.tokenizer.special_ids)
            lang_mask = mask
        enc = self.encode(b, mrm=want_mrm, lang_ids=lang_ids, lang_mask=lang_mask)
        total = torch.zeros((), device=self.device)
        metrics: dict[str, torch.Tensor] = {}
        if lc.bc > 0:
            bc, m = self.bc_loss(self.features(enc), b, lc)  # features (B, D)
            total = total + lc.bc * bc
            metrics.update(m, bc=_m(bc))
        if (lc.contrastive > 0 or lc.itm > 0) and self.has_language:
            pair_ids = self.pair_ids(b)
            obs_p, lang_p = self.pooled_observation(enc), self.pooled_instruction(enc)  # (B, D)
            keep = self.alignment_rows(b, lc)  # (B,) bool | None
            if keep is not None:
                obs_p, lang_p, pair_ids = obs_p[keep], lang_p[keep], pair_ids[keep]  # (B', D)
            ov, lv = self.obs_embed(obs_p), self.instr_embed(lang_p)  # (B, E)
            if lc.contrastive > 0:
                con = self.contrastive(ov, lv, pair_ids)
                total = total + lc.contrastive * con
                metrics["contrastive"] = _m(con)
            if lc.itm > 0:
                with torch.no_grad():
                    sim = self.contrastive.similarity(ov, lv)  # (B, B)
                itm_terms, itm_acc = self.pretrain_heads.itm_loss(obs_p, lang_p, sim, pair_ids, reduction="none")
                itm = self.global_mean(itm_terms)
                total = total + lc.itm * itm
                metrics.update(itm=_m(itm), itm_acc=_m(torch.as_tensor(itm_acc)))
        if want_mlm:
            mlm = self.global_mean(self.pretrain_heads.mlm_loss(enc["lang"], mlm_labels, reduction="none"))
            total = total + lc.mlm * mlm
            metrics["mlm"] = _m(mlm)
        if want_mrm:
            ex = enc["extras"]
            mrm = self.global_mean(self.pretrain_heads.mrm_loss(ex["mrm_pred"], ex["mrm_target"], ex["mrm_mask"],
                                                                reduction="none"))
            total = total + lc.mrm * mrm
            metrics["mrm"] = _m(mrm)
        if lc.grounding > 0:
            gl = self.grounding_loss(b, enc)
            total = total + lc.grounding * gl
            metrics["grounding"] = _m(gl)
        if lc.cells > 0:
            cl, m = self.cell_loss(b, enc)
            total = total + lc.cells * cl
            metrics.update(m, cells=_m(cl))
        if lc.positions > 0:
            pl, m = self.position_loss(b, enc)
            total = total + lc.positions * pl
            metrics.update(m, positions=_m(pl))
        aux = self.moe_aux_loss()
        if aux is not None and lc.moe_aux > 0:
            total = total + lc.moe_aux * aux
            metrics["moe_aux"] = _m(aux)
        metrics["loss"] = _m(total)
        return total, metrics


__all__ = ["LossConfig", "VLAObjectives"]
