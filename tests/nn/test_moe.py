"""Tests for vlafoundry.nn.moe against a slow per-token reference with the same routing and capacity rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlafoundry.nn.moe import ConditionalComputationGate, MultimodalMixtureOfExperts

ATOL = 1e-5  # float32, vectorised dispatch vs per-token loop


def reference_moe(m: MultimodalMixtureOfExperts, x: torch.Tensor, mask: torch.Tensor | None = None):
    """Per-token loop: top-k on softmax, gates renormalised, capacity filled by first choices (token order), then
    second choices; kept slots summed with their gates. Returns (y, aux_loss, dropped_slots, kept_per_expert)."""
    d, e, k = m.d_model, m.num_experts, m.top_k
    xf = x.reshape(-1, d)
    n = xf.shape[0]
    valid = [True] * n if mask is None else mask.reshape(-1).tolist()
    probs = torch.softmax(m.router(xf), dim=-1)
    n_valid = sum(valid)
    cap = m.expert_capacity if m.expert_capacity is not None else max(1, math.ceil(m.capacity_factor * n_valid * k / e))
    counts = [0] * e
    kept: list[list[int]] = [[] for _ in range(n)]
    dropped = 0
    for slot in range(k):
        for t in range(n):
            if not valid[t]:
                continue
            expert = int(probs[t].topk(k).indices[slot])
            if counts[expert] < cap:
                counts[expert] += 1
                kept[t].append(slot)
            else:
                dropped += 1
    rows = []
    for t in range(n):
        out = xf.new_zeros(d)
        if valid[t]:
            top_p, top_e = probs[t].topk(k)
            gates = top_p / top_p.sum() if m.normalize_gates else top_p
            for slot in kept[t]:
                ex = int(top_e[slot])
                h = m.act(xf[t] @ m.w1[ex] + m.b1[ex, 0])
                out = out + gates[slot] * (h @ m.w2[ex] + m.b2[ex, 0])
        rows.append(out)
    y = torch.stack(rows).view_as(x)
    vt = torch.tensor(valid)
    first = probs[vt].argmax(dim=-1)
    f = torch.stack([(first == i).float().mean() for i in range(e)])
    p = probs[vt].mean(dim=0)
    aux = m.aux_loss_weight * e * (f * p).sum()
    return y, aux, dropped, counts


def _grads(loss: torch.Tensor, m: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in m.parameters()]
    return list(torch.autograd.grad(loss, [x, *params], allow_unused=True))


@pytest.mark.parametrize(
    "cfg",
    [
        dict(num_experts=4, top_k=2, capacity_factor=1.25),  # default on CPU: one matmul pair per expert
        dict(num_experts=6, top_k=2, capacity_factor=1.25, load_groups=2),  # sorted, batched
        dict(num_experts=4, top_k=2, expert_capacity=3),  # heavy overflow
        dict(num_experts=5, top_k=1, capacity_factor=1.0),
        dict(num_experts=3, top_k=3, capacity_factor=2.0),
        dict(num_experts=4, top_k=2, capacity_factor=1.25, trim_buffer=False),
        dict(num_experts=4, top_k=2, capacity_factor=1.25, load_groups=1),  # one batched matmul, trimmed
        dict(num_experts=7, top_k=2, capacity_factor=1.25, load_groups=3),  # uneven groups (3, 3, 1)
        dict(num_experts=8, top_k=2, expert_capacity=2, load_groups=8),  # one expert per group, overflow
        dict(num_experts=16, top_k=1, capacity_factor=1.0, load_groups=4),  # experts that keep nothing
    ],
)
def test_moe_matches_per_token_reference(cfg):
    torch.manual_seed(0)
    m = MultimodalMixtureOfExperts(d_model=6, d_ff=10, **cfg)
    x = torch.randn(3, 7, 6, requires_grad=True)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    y = m(x, mask)
    y_ref, aux_ref, dropped, _ = reference_moe(m, x, mask)
    assert torch.allclose(y, y_ref, atol=ATOL)
    assert torch.allclose(m.aux_loss, aux_ref, atol=ATOL)
    assert m.last_stats["tokens_dropped"] == dropped
    w = torch.randn_like(y)
    g = _grads((y * w).sum() + m.aux_loss, m, x)
    g_ref = _grads((y_ref * w).sum() + aux_ref, m, x)
    for a, b in zip(g, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=ATOL)


def test_default_groups_one_per_expert_on_cpu_and_batched_elsewhere():
    m = MultimodalMixtureOfExperts(num_experts=16, d_model=8)
    assert m._num_groups(torch.device("cpu")) == 16  # unpadded per-expert matmuls
    assert m._num_groups(torch.device("meta")) == 4  # accelerators: a few load-sorted batched matmuls
    assert MultimodalMixtureOfExperts(num_experts=3, d_model=8)._num_groups(torch.device("meta")) == 3
    assert MultimodalMixtureOfExperts(num_experts=16, d_model=8, load_groups=2)._num_groups(torch.device("cpu")) == 2


def test_capacity_enforced_and_overflow_counted():
    torch.manual_seed(1)
    m = MultimodalMixtureOfExperts(num_experts=4, d_model=8, expert_capacity=2, top_k=2)
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.bias.copy_(torch.tensor([3.0, 2.0, 0.0, -1.0]))  # every token picks experts 0 then 1
    x = torch.randn(10, 8)
    y = m(x)
    _, _, dropped, counts = reference_moe(m, x)
    assert max(counts) <= 2 and counts == [2, 2, 0, 0]
    assert dropped == 16 and m.last_stats["tokens_dropped"] == 16.0
    assert m.last_stats["overflow_fraction"] == pytest.approx(16 / 20)
    assert m.last_stats["tokens_unrouted"] == 8.0  # tokens 2..9 lost both slots
    assert m.last_stats["expert_load"] == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert (y[2:] == 0).all() and (y[:2].abs().sum(-1) > 0).all()  # first choices of tokens 0, 1 kept


def test_first_choices_take_priority_over_second_choices():
    m = MultimodalMixtureOfExperts(num_experts=2, d_model=4, expert_capacity=2, top_k=2)
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.weight[0, 0], m.router.weight[1, 0] = 5.0, -5.0
    x = torch.zeros(4, 4)
    x[:, 0] = torch.tensor([1.0, 1.0, -1.0, -1.0])  # tokens 0, 1 prefer expert 0; tokens 2, 3 prefer expert 1
    m(x)
    _, _, dropped, counts = reference_moe(m, x)
    # All four first choices fit (2 per expert); all four second choices overflow.
    assert counts == [2, 2] and dropped == 4 and m.last_stats["tokens_dropped"] == 4.0
    assert m.last_stats["tokens_unrouted"] == 0.0


def test_default_capacity_formula():
    m = MultimodalMixtureOfExperts(num_experts=8, d_model=4, top_k=2, capacity_factor=1.25)
    assert m.capacity(100) == math.ceil(1.25 * 100 * 2 / 8)
    m(torch.randn(2, 50, 4))
    assert m.last_stats["capacity"] == 32.0


def test_aux_loss_formula_and_uniform_value():
    torch.manual_seed(2)
    m = MultimodalMixtureOfExperts(num_experts=4, d_model=5, aux_loss_weight=0.5)
    x = torch.randn(20, 5)
    m(x)
    probs = torch.softmax(m.router(x), -1)
    f = F.one_hot(probs.argmax(-1), 4).float().mean(0)
    assert torch.allclose(m.aux_loss, 0.5 * 4 * (f * probs.mean(0)).sum(), atol=1e-6)
    assert m.aux_loss.requires_grad
    with torch.no_grad():
        m.router.weight.zero_(), m.router.bias.zero_()
    m(torch.randn(16, 5))
    assert m.aux_loss.item() == pytest.approx(0.5)  # uniform router: E * sum (f_e / E) = 1, times the weight


def test_mask_excludes_padding():
    torch.manual_seed(3)
    m = MultimodalMixtureOfExperts(num_experts=4, d_model=6, capacity_factor=1.0)
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, False]])
    y = m(x, mask)
    aux, stats = m.aux_loss, dict(m.last_stats)
    assert (y[~mask] == 0).all()
    y_valid = m(x[mask])  # the same tokens alone, no padding at all
    assert torch.allclose(y[mask], y_valid, atol=ATOL)
    assert torch.allclose(aux, m.aux_loss, atol=1e-6)
    assert stats == m.last_stats
    # Padding content does not influence valid outputs.
    x2 = x.clone()
    x2[~mask] = 100.0
    assert torch.allclose(m(x2, mask)[mask], y[mask], atol=ATOL)


def test_every_parameter_gets_gradient_and_shapes():
    torch.manual_seed(4)
    m = MultimodalMixtureOfExperts(num_experts=4, d_model=8, dropout=0.1)
    x = torch.randn(2, 16, 8)
    y = m(x)
    assert y.shape == x.shape and m(x.reshape(-1, 8)).shape == (32, 8)
    y = m(x)
    (y.pow(2).mean() + m.aux_loss).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert m.w1.shape == (4, 8, 16) and m.w2.shape == (4, 16, 8)  # d_ff defaults to 2 * d_model


def test_top1_router_gets_task_gradient():
    torch.manual_seed(5)
    m = MultimodalMixtureOfExperts(num_experts=4, d_model=8, top_k=1, capacity_factor=4.0)
    m(torch.randn(12, 8)).sum().backward()
    assert m.router.weight.grad.abs().sum() > 0  # gate = raw prob (Switch), not renormalised to 1


def test_moe_bad_inputs():
    m = MultimodalMixtureOfExperts(num_experts=4, d_model=8)
    with pytest.raises(ValueError, match="x"):
        m(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="mask"):
        m(torch.randn(2, 3, 8), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        m(torch.randn(2, 3, 8), torch.ones(2, 3))
    with pytest.raises(ValueError, match="top_k"):
        MultimodalMixtureOfExperts(num_experts=2, d_model=8, top_k=3)
    with pytest.raises(ValueError, match="load_groups"):
        MultimodalMixtureOfExperts(num_experts=4, d_model=8, load_groups=0)


def test_conditional_gate():
    torch.manual_seed(6)
    gate = ConditionalComputationGate(d_model=8, threshold=0.5)
    x = torch.randn(4, 3, 5, requires_grad=True)
    cond = torch.randn(4, 8)
    y = gate(x, cond)
    g = gate.gate(cond)  # (4, 1)
    assert torch.allclose(y, x * g[:, :, None], atol=1e-6)
    y.sum().backward()
    for name, p in gate.named_parameters():
        assert p.grad is not None, name
    with torch.no_grad():  # logit = sum of hidden units - their median: about half the gates close
        hidden = gate.gate[1](gate.gate[0](cond)).sum(-1)
        gate.gate[2].weight.fill_(1.0)
        gate.gate[2].bias.fill_(-hidden.median().item() - 1e-3)
        gv = gate.gate_values(cond)
        hard = gate(x, cond, hard=True)
    closed = (gv < 0.5).squeeze(-1)
    assert closed.any() and (~closed).any()
    assert (hard[closed] == 0).all()
    assert torch.allclose(hard[~closed], (x * gv[:, :, None])[~closed])
    per_token = gate(x[..., :1].expand(4, 3, 1), torch.randn(4, 3, 8))
    assert per_token.shape == (4, 3, 1)
    with pytest.raises(ValueError, match="condition_features"):
        gate(x, torch.randn(4, 7))
    with pytest.raises(ValueError, match="condition_features"):
        gate(x, torch.randn(5, 8))


def test_all_padding_and_empty_input():
    m = MultimodalMixtureOfExperts(num_experts=4, d_model=8)
    y = m(torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.bool))
    assert (y == 0).all() and m.aux_loss.item() == 0.0 and m.last_stats["tokens_dropped"] == 0.0
    assert m(torch.randn(0, 8)).shape == (0, 8)


@pytest.mark.parametrize("act", [torch.nn.ReLU, torch.nn.SiLU, torch.nn.Tanh])  # Tanh: the autograd fallback
@pytest.mark.parametrize("load_groups", [None, 3])
def test_activations_match_per_token_reference(act, load_groups):
    torch.manual_seed(7)
    m = MultimodalMixtureOfExperts(num_experts=5, d_model=6, d_ff=10, act_layer=act, load_groups=load_groups)
    assert m._fast_path(torch.zeros(1, 6)) == (act is not torch.nn.Tanh)
    x = torch.randn(4, 5, 6, requires_grad=True)
    y = m(x)
    y_ref, aux_ref, _, _ = reference_moe(m, x)
    assert torch.allclose(y, y_ref, atol=ATOL)
    w = torch.randn_like(y)
    for a, b in zip(_grads((y * w).sum() + m.aux_loss, m, x), _grads((y_ref * w).sum() + aux_ref, m, x)):
        assert torch.allclose(a, b, atol=ATOL)


@pytest.mark.parametrize("cfg", [{}, {"load_groups": 2}, {"trim_buffer": False}, {"expert_capacity": 2}])
def test_gradients_reach_input_and_every_parameter(cfg):
    """Inside a network the input requires a gradient: the hand-written expert backward must deliver it, and every
    parameter's, exactly as autograd does. Float64, dropout on; the seed is reset before each call so that every
    evaluation draws the same dropout mask."""
    torch.manual_seed(8)
    m = MultimodalMixtureOfExperts(num_experts=4, d_model=5, d_ff=7, dropout=0.3, **cfg).double().train()
    x = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def run(fast: bool) -> list[torch.Tensor]:
        m._fast_path = lambda buf: fast  # instance attribute shadows the method
        torch.manual_seed(0)
        y = m(x)
        grads = _grads((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + m.aux_loss, m, x)
        del m._fast_path
        return [y, *grads]

    fast = run(True)
    assert fast[1] is not None and fast[1].abs().sum() > 0  # input gradient
    for name, g in zip(names, fast[2:]):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    # The dropout masks are drawn differently (one (R, H) draw vs one per expert), so compare without dropout too.
    m.drop.p = 0.0
    fast0, slow0 = run(True), run(False)
    for what, a, b in zip(["output", "input", *names], fast0, slow0):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10), what

    def experts(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
        return torch.func.functional_call(m, params, (x.detach(),), strict=False)

    m.drop.p = 0.3  # float64 gradcheck of the expert parameters (the router runs in float32), dropout on
    assert torch.autograd.gradcheck(experts, (m.w1, m.b1, m.w2, m.b2), eps=1e-6, atol=1e-8)


def test_input_without_gradient_and_frozen_experts():
    torch.manual_seed(9)
    m = MultimodalMixtureOfExperts(num_experts=4, d_model=6, d_ff=8)
    x = torch.randn(3, 6)
    m(x).sum().backward()  # input without grad: parameters still get theirs
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad(set_to_none=True)
    for p in (m.w1, m.b1, m.w2, m.b2):
        p.requires_grad_(False)
    x.requires_grad_(True)
    m(x).sum().backward()
    assert x.grad is not None and m.w1.grad is None and m.router.weight.grad is not None
