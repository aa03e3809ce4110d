"""Expert kernels of :class:`~vlafoundry.nn.moe.MultimodalMixtureOfExperts`: every expert's FFN on the dispatch buffer.

:class:`_ExpertFFN` runs the experts' two-layer FFNs on their rows of the dispatch buffer with the backward written
out (for the activations in ``_ACT_GRADS``: GELU, ReLU, SiLU), through the grouped matmul helpers below (a group of
one expert is a plain matmul, a group of several a batched one). :class:`_PermuteRows` is the row permutation the
autograd path uses to put the expert weights in buffer order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn


class _PermuteRows(torch.autograd.Function):
    """``x[order]`` for a permutation ``order`` of dim 0, with ``grad[inverse]`` as backward (index_select's own
    backward zero-fills a tensor of x's size and scatters into it)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, order: torch.Tensor,
                inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


# Activations whose derivative _ExpertFFN writes out by hand; any other act_layer runs through autograd.
_ActGrad = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
_ACT_GRADS: dict[type[nn.Module], _ActGrad] = {
    nn.GELU: lambda act, grad, pre: torch.ops.aten.gelu_backward(grad, pre, approximate=act.approximate),
    nn.ReLU: lambda act, grad, pre: grad * (pre > 0),
    nn.SiLU: lambda act, grad, pre: torch.ops.aten.silu_backward(grad, pre),
}

# One group of the buffer: (expert ids, rows per expert). Its experts' rows are consecutive in the buffer.
Group = tuple[list[int], int]


def _expert_slice(p: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """``p[ids]`` for the (E, ...) expert parameter ``p``: a view when ``ids`` are consecutive, else a gather."""
    if len(ids) == 1:
        return p[ids[0]]
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return p[ids[0] : ids[0] + len(ids)]
    return p.index_select(0, torch.tensor(ids, device=p.device))


class _ExpertFFN(torch.autograd.Function):
    """Every expert's ``act(x W1 + b1) [dropout] W2 + b2`` on its rows of the dispatch buffer, backward written out.

    The matmuls write straight into one preallocated tensor each (outputs, hidden pre-activations, input and weight
    gradients): no per-expert concatenation, no zero-filled full-size gradient per expert, and one autograd node
    instead of ~10 per expert. The activation, its derivative, dropout and the bias gradients run once over the
    whole ``(R, H)`` buffer rather than once per expert, so a step costs 2 matmul calls per expert forward and 4
    backward plus a handful of whole-buffer operations.

    ``groups``: consecutive buffer blocks, each ``(ids, width)``: ``len(ids)`` experts of ``width`` rows each; a group
    of one expert is a plain matmul, a group of several a batched one. ``keep_prob``: dropout on the hidden
    activations with this probability of keeping a unit (None: no dropout).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, buf: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor, b2: torch.Tensor, act: nn.Module, groups: list[Group],
                keep_prob: float | None) -> torch.Tensor:
        r, d, h = buf.shape[0], buf.shape[1], w1.shape[2]
        pre = buf.new_empty(r, h)  # (R, H); every row belongs to exactly one group
        for ids, width, rows in _blocks(groups):
            _matmul(buf[rows], w1, b1, ids, width, pre[rows])
        hidden = act(pre)  # (R, H)
        keep = None
        if keep_prob is not None:
            keep = torch.empty_like(hidden).bernoulli_(keep_prob).div_(keep_prob)  # (R, H): 0 or 1 / keep_prob
            hidden = hidden * keep
        out = buf.new_empty(r, d)  # (R, D)
        for ids, width, rows in _blocks(groups):
            _matmul(hidden[rows], w2, b2, ids, width, out[rows])
        ctx.act, ctx.groups = act, groups
        ctx.save_for_backward(buf, w1, w2, pre, hidden, keep)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        buf, w1, w2, pre, hidden, keep = ctx.saved_tensors
        groups: list[Group] = ctx.groups
        need_x, need_w = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:5])
        g = grad_out.contiguous()  # (R, D)
        g_hidden = torch.empty_like(hidden)  # (R, H)
        g_w2 = _empty_weight_grad(w2, groups) if need_w else None
        for ids, width, rows in _blocks(groups):
            _matmul(g[rows], w2, None, ids, width, g_hidden[rows], transpose=True)  # g W2^T
            if g_w2 is not None:
                _weight_grad(hidden[rows], g[rows], ids, width, g_w2)  # hidden^T g
        if keep is not None:
            g_hidden.mul_(keep)
        g_pre = _ACT_GRADS[type(ctx.act)](ctx.act, g_hidden, pre)  # (R, H)
        g_x = torch.empty_like(buf) if need_x else None  # (R, D)
        g_w1 = _empty_weight_grad(w1, groups) if need_w else None
        for ids, width, rows in _blocks(groups):
            if g_x is not None:
                _matmul(g_pre[rows], w1, None, ids, width, g_x[rows], transpose=True)  # g_pre W1^T
            if g_w1 is not None:
                _weight_grad(buf[rows], g_pre[rows], ids, width, g_w1)  # x^T g_pre
        g_b1 = g_b2 = None
        if need_w:  # bias gradients: row sums per expert, one index_add over the whole buffer each
            row_expert = torch.repeat_interleave(
                torch.tensor([e for ids, _ in groups for e in ids], device=buf.device),
                torch.tensor([w for ids, w in groups for _ in ids], device=buf.device),
            )  # (R,)
            e = w1.shape[0]
            g_b1 = g_pre.new_zeros(e, g_pre.shape[1]).index_add_(0, row_expert, g_pre).unsqueeze(1)  # (E, 1, H)
            g_b2 = g.new_zeros(e, g.shape[1]).index_add_(0, row_expert, g).unsqueeze(1)  # (E, 1, D)
        return g_x, g_w1, g_b1, g_w2, g_b2, None, None, None


def _empty_weight_grad(w: torch.Tensor, groups: list[Group]) -> torch.Tensor:
    """Uninitialised gradient for the (E, In, Out) weight ``w``, zeroed only for experts that keep no row (the
    others are written whole by :func:`_weight_grad`)."""
    grad = torch.empty_like(w)
    idle = [e for ids, width in groups if width == 0 for e in ids]
    if idle:
        grad.index_fill_(0, torch.tensor(idle, device=w.device), 0.0)
    return grad


def _blocks(groups: list[Group]) -> Iterator[tuple[list[int], int, slice]]:
    """The non-empty groups with their buffer rows."""
    offset = 0
    for ids, width in groups:
        n = len(ids) * width
        if n > 0:
            yield ids, width, slice(offset, offset + n)
        offset += n


def _matmul(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, ids: list[int], width: int,
            out: torch.Tensor, transpose: bool = False) -> None:
    """``out = x @ w[e] (+ b[e])`` for the experts ``ids`` of one group, each on its ``width`` rows of ``x``
    (``w[e]^T`` with ``transpose``); ``x`` (G*W, In), ``out`` (G*W, Out), written in place."""
    we = _expert_slice(w, ids)
    if len(ids) == 1:
        we = we.t() if transpose else we
        if b is None:
            torch.mm(x, we, out=out)
        else:
            torch.addmm(_expert_slice(b, ids), x, we, out=out)
        return
    we = we.transpose(1, 2) if transpose else we
    x3, out3 = x.view(len(ids), width, -1), out.view(len(ids), width, -1)  # (G, W, In), (G, W, Out)
    if b is None:
        torch.bmm(x3, we, out=out3)
    else:
        torch.baddbmm(_expert_slice(b, ids), x3, we, out=out3)


def _weight_grad(x: torch.Tensor, g: torch.Tensor, ids: list[int], width: int, grad: torch.Tensor) -> None:
    """``grad[e] = x_e^T g_e`` for the experts ``ids`` of one group (x (G*W, In), g (G*W, Out), grad (E, In, Out))."""
    if len(ids) == 1:
        torch.mm(x.t(), g, out=grad[ids[0]])
        return
    x3, g3 = x.view(len(ids), width, -1), g.view(len(ids), width, -1)
    grad.index_copy_(0, torch.tensor(ids, device=grad.device), torch.bmm(x3.transpose(1, 2), g3))
