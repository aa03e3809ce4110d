"""Sparse mixture-of-experts feed-forward layer and a conditional computation gate.

:class:`MultimodalMixtureOfExperts` is a drop-in replacement for a transformer FFN (``ffn_layer`` of
:class:`~vlafoundry.nn.blocks.TransformerEncoderBlock`). Routing is top-k on the router softmax, with GShard/Switch
capacity: every expert processes at most ``C`` token-slots per forward, first choices of all tokens take priority
over second choices, and slots over capacity are dropped (they contribute zero; the caller's residual connection
carries the token through). Dispatch is vectorised: slot positions come from a stable sort of the slots by
expert, tokens are gathered into a buffer of expert rows (a contiguous block per expert), the experts run on
their blocks, and results are added back with ``index_add``. No Python loop over tokens and no boolean masks: on CPU
each expert is one matmul pair on exactly its kept rows (E calls, no padding); on GPUs the experts are sorted by
load and run as a few batched matmuls, each group padded only to its fullest expert (``load_groups``).

The experts' forward and backward are written out (:class:`_ExpertFFN`) for GELU, ReLU and SiLU experts outside
autocast: outputs, activations and gradients go into one preallocated tensor each, the activation and its derivative
run once over the whole buffer, so a training step costs 6 matmul calls per expert plus a few whole-buffer
operations, with no zero-filled full-size gradients and no per-expert concatenations. Other activations (or
autocast) use the same layout through autograd.

The layer itself lives here; its expert kernels (:class:`_ExpertFFN` and helpers) are in
:mod:`vlafoundry.nn.moe_experts` and :class:`ConditionalComputationGate` is in :mod:`vlafoundry.nn.gating`, both
re-exported from this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vlafoundry.nn._checks import check_mask, check_same_device, check_tensor
from vlafoundry.nn.gating import ConditionalComputationGate
from vlafoundry.nn.moe_experts import _ACT_GRADS, Group, _ExpertFFN, _PermuteRows
from vlafoundry.nn.moe_experts import (  # noqa: F401 (re-exported)
    _ActGrad,
    _blocks,
    _empty_weight_grad,
    _expert_slice,
    _matmul,
    _weight_grad,
)

__all__ = ["MultimodalMixtureOfExperts", "ConditionalComputationGate"]


def _uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(t, -bound, bound)


class MultimodalMixtureOfExperts(nn.Module):
    """Top-k routed mixture of two-layer FFN experts with capacity limits and a Switch load-balancing loss.

    Args:
        num_experts: E.
        d_model: token width D.
        expert_capacity: fixed per-expert capacity C in token-slots; None -> ``ceil(capacity_factor * T * top_k / E)``
            with T the number of routed (valid) tokens of the forward call.
        top_k: experts per token.
        capacity_factor: slack over a perfectly balanced load when ``expert_capacity`` is None.
        d_ff: expert hidden width H (default ``2 * d_model``).
        dropout: dropout on the expert hidden activations.
        act_layer: activation module class.
        aux_loss_weight: multiplier applied to the load-balancing loss stored in ``self.aux_loss``.
        normalize_gates: divide the top-k probabilities by their sum. Default: True for top_k > 1; False for
            top_k == 1 (Switch), where renormalising would make the gate constant 1 and cut the router off from the
            task gradient.
        trim_buffer: size the expert buffers to the loads actually kept instead of C (same results, less padding
            compute; costs one host sync, set False for static shapes, e.g. CUDA graphs, where every expert gets
            exactly C rows in one batched matmul).
        load_groups: with ``trim_buffer``, how many matmul groups the experts run in. ``num_experts``: one plain
            matmul pair per expert on exactly its kept rows (no padding FLOPs; fastest on CPU, where per-call
            overhead is small). 1: one batched matmul padded to the fullest expert. In between: experts sorted by
            kept load and split into this many groups, each a batched matmul padded to its own fullest expert
            (fewer, larger kernels; suits GPUs). None (default): ``num_experts`` on CPU, 4 on other devices.

    forward(x (B, L, D) or (N, D), mask (B, L) / (N,) bool | None, True = real token) -> same shape as x.
    Masked-out tokens are not routed, occupy no capacity, are excluded from the aux loss and get a zero output.

    After each forward:
        ``self.aux_loss``: ``aux_loss_weight * E * sum_e f_e * P_e`` (scalar with grad), where f_e is the fraction
            of valid tokens whose first choice is e and P_e the mean router probability of e over valid tokens
            (1.0 * weight for a perfectly uniform router).
        ``self.last_stats``: floats ``overflow_fraction`` (dropped token-slots / routed token-slots),
            ``tokens_dropped`` (number of dropped token-slots), ``tokens_unrouted`` (tokens that lost every slot),
            ``capacity`` (C) and ``expert_load`` (list, fraction of routed token-slots assigned to each expert
            before capacity is applied).
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        expert_capacity: int | None = None,
        top_k: int = 2,
        capacity_factor: float = 1.25,
        d_ff: int | None = None,
        dropout: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        aux_loss_weight: float = 1.0,
        normalize_gates: bool | None = None,
        trim_buffer: bool = True,
        load_groups: int | None = None,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts: expected >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k: expected in [1, num_experts={num_experts}], got {top_k}")
        if expert_capacity is not None and expert_capacity < 1:
            raise ValueError(f"expert_capacity: expected >= 1 or None, got {expert_capacity}")
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor: expected > 0, got {capacity_factor}")
        if load_groups is not None and load_groups < 1:
            raise ValueError(f"load_groups: expected >= 1 or None, got {load_groups}")
        self.num_experts = num_experts
        self.d_model = d_model
        self.expert_capacity = expert_capacity
        self.top_k = top_k
        self.capacity_factor = float(capacity_factor)
        self.d_ff = d_ff if d_ff is not None else 2 * d_model
        self.aux_loss_weight = float(aux_loss_weight)
        self.normalize_gates = (top_k > 1) if normalize_gates is None else bool(normalize_gates)
        self.trim_buffer = bool(trim_buffer)
        self.load_groups = None if load_groups is None else int(load_groups)

        self.router = nn.Linear(d_model, num_experts)
        h = self.d_ff
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, h))  # (E, D, H)
        self.b1 = nn.Parameter(torch.empty(num_experts, 1, h))  # (E, 1, H)
        self.w2 = nn.Parameter(torch.empty(num_experts, h, d_model))  # (E, H, D)
        self.b2 = nn.Parameter(torch.empty(num_experts, 1, d_model))  # (E, 1, D)
        self.act = act_layer()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

        self.aux_loss: torch.Tensor = torch.zeros(())
        self.last_stats: dict[str, float | list[float]] = {}

    def reset_parameters(self) -> None:
        for w, b, fan_in in ((self.w1, self.b1, self.d_model), (self.w2, self.b2, self.d_ff)):
            _uniform_(w, fan_in)
            _uniform_(b, fan_in)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, top_k={self.top_k}, "
            f"expert_capacity={self.expert_capacity}, capacity_factor={self.capacity_factor}"
        )

    def capacity(self, num_tokens: int) -> int:
        """Per-expert capacity (token-slots) for ``num_tokens`` routed tokens."""
        if self.expert_capacity is not None:
            return self.expert_capacity
        return max(1, math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts))

    def route(self, x_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities and top-k choice: (N, D) -> probs (N, E) fp32, gates (N, k), experts (N, k)."""
        probs = torch.softmax(self.router(x_flat).float(), dim=-1)  # (N, E)
        top_p, top_e = probs.topk(self.top_k, dim=-1)  # (N, k)
        gates = top_p / top_p.sum(dim=-1, keepdim=True) if self.normalize_gates else top_p
        return probs, gates, top_e

    def _aux_loss(self, probs: torch.Tensor, first: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Switch load-balancing loss E * sum_e f_e P_e over valid tokens."""
        e = self.num_experts
        if valid is None:
            w = probs.new_ones(first.shape[0])  # (N,)
            denom = float(first.shape[0])
            p = probs.mean(dim=0)
        else:
            w = valid.to(probs.dtype)  # (N,)
            denom = w.sum().clamp_min(1.0)
            p = (probs * w[:, None]).sum(0) / denom
        f = probs.new_zeros(e).index_add_(0, first, w) / denom  # (E,) fraction of first choices
        return self.aux_loss_weight * e * (f * p).sum()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("x", x, ndim=(2, 3), last_dim=self.d_model, like=self.w1)
        if mask is not None:
            check_mask("mask", mask, x.shape[:-1])
            check_same_device(x=x, mask=mask)
        e, k, d = self.num_experts, self.top_k, self.d_model
        x_flat = x.reshape(-1, d)  # (N, D)
        n = x_flat.shape[0]
        valid = mask.reshape(-1) if mask is not None else None  # (N,)
        num_valid = n if valid is None else int(valid.sum())
        if num_valid == 0:  # nothing to route: zero output, zero aux loss that still reaches the router
            self.aux_loss = self.router.weight.sum() * 0.0
            self.last_stats = {
                "overflow_fraction": 0.0,
                "tokens_dropped": 0.0,
                "tokens_unrouted": 0.0,
                "capacity": float(self.capacity(0)),
                "expert_load": [0.0] * e,
            }
            return torch.zeros_like(x)
        cap = self.capacity(num_valid)

        probs, gates, top_e = self.route(x_flat)
        self.aux_loss = self._aux_loss(probs, top_e[:, 0], valid)

        # Slot-major order (all first choices, then all second choices...) gives first choices priority.
        slot_expert = top_e.transpose(0, 1).reshape(-1)  # (k*N,) slot s = choice s // N of token s % N
        slot_gate = gates.transpose(0, 1).reshape(-1)  # (k*N,)
        if valid is not None:
            routed = valid.repeat(k)  # (k*N,)
            bucket = torch.where(routed, slot_expert, torch.full_like(slot_expert, e))  # unrouted slots: bucket E
        else:
            routed = torch.ones_like(slot_expert, dtype=torch.bool)
            bucket = slot_expert
        # Position of each slot in its expert's queue (the number of earlier slots sent to the same expert): rank
        # in a stable sort by expert, minus the expert's first rank.
        counts = torch.bincount(bucket, minlength=e + 1)  # (E+1,)
        by_expert = torch.argsort(bucket, stable=True)  # (k*N,) slots grouped by expert, slot order kept
        first_rank = torch.cumsum(counts, 0) - counts  # (E+1,)
        rank = torch.arange(bucket.numel(), device=x.device) - first_rank[bucket[by_expert]]  # (k*N,) sorted order
        position = torch.empty_like(rank).scatter_(0, by_expert, rank)  # (k*N,) slot order
        keep = routed & (position < cap)
        load = counts[:e]  # (E,) slots assigned to each expert before the capacity cut
        order, groups, row_start, rows = self._layout(load, cap)  # buffer layout, see _layout
        dest = torch.where(keep, row_start[slot_expert] + position, torch.full_like(position, rows))  # (k*N,)

        # Dispatch as a gather: which token fills each buffer row. Empty rows read token 0 and are combined with
        # gate 0, so they add nothing to any output or gradient.
        slot_token = torch.arange(n, device=x.device).repeat(k)  # (k*N,)
        source = x.new_zeros(rows + 1, dtype=torch.long).scatter_(0, dest, slot_token)[:rows]  # (R,)
        buf = x_flat.index_select(0, source)  # (R, D)
        if self._fast_path(buf):
            ids = list(range(e)) if order is None else order.tolist()
            fast_groups: list[Group] = []
            for count, width in groups:
                fast_groups.append((ids[:count], width))
                ids = ids[count:]
            keep_prob = 1.0 - self.drop.p if isinstance(self.drop, nn.Dropout) and self.training else None
            out = _ExpertFFN.apply(buf, self.w1, self.b1, self.w2, self.b2, self.act, fast_groups, keep_prob)
        else:
            out = self._run_experts(buf, order, groups)  # (R, D)

        # Combine: scale each buffer row by its slot's gate (0 for empty rows) and add it into its token's output.
        row_gate = (slot_gate * keep).to(x.dtype)  # (k*N,), dropped slots carry 0
        row_gate = x.new_zeros(rows + 1).scatter(0, dest, row_gate)[:rows]  # (R,)
        y = x_flat.new_zeros(n, d).index_add_(0, source, out * row_gate[:, None])  # (N, D)

        self._record_stats(routed, keep, load, cap, n)
        return y.view_as(x)

    def _fast_path(self, buf: torch.Tensor) -> bool:
        """Whether the experts can run as :class:`_ExpertFFN` (hand-written backward): a known, out-of-place
        activation, no autocast (its outputs are written into preallocated tensors) and one dtype throughout."""
        if type(self.act) not in _ACT_GRADS or getattr(self.act, "inplace", False):
            return False
        if torch.is_autocast_enabled(buf.device.type):
            return False
        return buf.dtype == self.w1.dtype

    def _num_groups(self, device: torch.device) -> int:
        if self.load_groups is not None:
            return min(self.load_groups, self.num_experts)
        return self.num_experts if device.type == "cpu" else min(4, self.num_experts)

    def _layout(self, load: torch.Tensor, cap: int) -> tuple[torch.Tensor | None, list[tuple[int, int]], torch.Tensor, int]:
        """Buffer layout for the experts' kept slots.

        Returns ``order`` ((E,) the experts in buffer order, or None for natural order), ``groups`` (list of
        ``(count, width)`` partitioning the E experts of ``order``: the next ``count`` experts each own ``width``
        consecutive rows; a group of width 0 has no rows and runs nothing), ``row_start`` (E,) the first buffer row
        of each expert, and the total row count R.

        - Static (``trim_buffer=False``): one group of every expert, C rows each.
        - One group per expert: natural order, each expert exactly its kept load ``min(load, C)`` (no padding).
        - One group: natural order, every expert padded to the fullest one.
        - Otherwise experts are sorted by kept load and split into equal-sized groups, each padded to its fullest
          expert.
        """
        e = self.num_experts
        # forward() returns early when nothing is routed, and C >= 1, so some expert keeps a slot: R >= 1.
        kept = load.clamp(max=cap)  # (E,)
        num_groups = self._num_groups(load.device)
        if not self.trim_buffer:
            return None, [(e, cap)], torch.arange(e, device=load.device) * cap, e * cap
        if num_groups == 1:
            width = int(kept.max())  # one host sync
            return None, [(e, width)], torch.arange(e, device=load.device) * width, e * width
        if num_groups == e:
            widths = kept.tolist()  # one host sync
            row_start = torch.cumsum(kept, 0) - kept  # (E,) exclusive prefix sum
            return None, [(1, int(w)) for w in widths], row_start, int(sum(widths))
        order = torch.argsort(kept, descending=True, stable=True)  # (E,) fullest first
        kept_sorted = kept[order].tolist()  # one host sync
        size = math.ceil(e / num_groups)
        groups: list[tuple[int, int]] = []
        starts = [0] * e
        rows = 0
        for g0 in range(0, e, size):
            count, width = min(size, e - g0), int(kept_sorted[g0])  # sorted: the group's first is its fullest
            for r in range(count):
                starts[g0 + r] = rows + r * width
            groups.append((count, width))
            rows += count * width
        sorted_start = torch.tensor(starts, device=load.device)
        row_start = torch.empty_like(sorted_start).scatter_(0, order, sorted_start)  # (E,) back to expert order
        return order, groups, row_start, rows

    def _run_experts(self, buf: torch.Tensor, order: torch.Tensor | None, groups: list[tuple[int, int]]) -> torch.Tensor:
        """Every expert's FFN on its rows of ``buf`` (R, D): one matmul pair per group -> (R, D).

        Sorted layouts put the expert weights in buffer order once (a row permutation whose backward is the
        inverse gather, not a zero-filled scatter); the weights are then split into the groups (split's backward
        is one concatenation, where per-group slicing would zero-fill a full-size gradient per group)."""
        params = (self.w1, self.b1, self.w2, self.b2)
        if order is not None:
            inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
            params = tuple(_PermuteRows.apply(p, order, inverse) for p in params)
        counts = [count for count, _ in groups]
        chunks = zip(*(p.split(counts) for p in params)) if len(groups) > 1 else [params]
        # split, not slicing: split's backward is one concatenation, where each slice's backward would zero-fill
        # a gradient of buf's full size (E of them per step when the input requires a gradient)
        blocks = buf.split([count * width for count, width in groups]) if len(groups) > 1 else [buf]
        outs = []
        for (count, width), (w1, b1, w2, b2), xb in zip(groups, chunks, blocks):  # xb: (G*W, D)
            if width == 0:  # these experts keep nothing
                continue
            if count == 1:  # (W, D) @ (D, H): a plain matmul (squeeze, not [0]: its backward zero-fills nothing)
                hidden = self.drop(self.act(torch.addmm(b1.squeeze(0), xb, w1.squeeze(0))))  # (W, H)
                outs.append(torch.addmm(b2.squeeze(0), hidden, w2.squeeze(0)))  # (W, D)
            else:
                xb = xb.view(count, width, self.d_model)  # (G, W, D)
                hidden = self.drop(self.act(torch.baddbmm(b1, xb, w1)))  # (G, W, H)
                outs.append(torch.baddbmm(b2, hidden, w2).reshape(count * width, self.d_model))  # (G*W, D)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    @torch.no_grad()
    def _record_stats(
        self, routed: torch.Tensor, keep: torch.Tensor, load: torch.Tensor, cap: int, n: int
    ) -> None:
        k = self.top_k
        load = load.float()  # (E,)
        n_routed = routed.sum()
        token_kept = keep.view(k, n).any(dim=0)
        token_routed = routed.view(k, n).any(dim=0)
        summary = torch.stack([n_routed.float(), keep.sum().float(), (token_routed & ~token_kept).sum().float()])
        s = torch.cat([summary, load / n_routed.clamp_min(1)]).tolist()
        dropped = s[0] - s[1]
        self.last_stats = {
            "overflow_fraction": dropped / max(s[0], 1.0),
            "tokens_dropped": dropped,
            "tokens_unrouted": s[2],
            "capacity": float(cap),
            "expert_load": s[3:],
        }
