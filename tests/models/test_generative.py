"""Generative action heads (flow matching, diffusion), chunk execution (receding horizon, temporal ensembling)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlafoundry.config import ConfigError
from vlafoundry.models import PolicyConfig, PolicySpec, VLAPolicy, load_policy
from vlafoundry.models.acting import temporal_ensemble
from vlafoundry.models.components import HEADS, ContinuousHead
from vlafoundry.models.generative import DiffusionHead, beta_schedule
from vlafoundry.models.objectives import LossConfig

GENERATIVE = ["flow", "diffusion"]


def head_cfg(**kw):
    base = {"chunk": 2, "gen_hidden": 64, "gen_layers": 2, "flow_steps": 10, "diffusion_steps": 10,
            "diffusion_train_steps": 50, "diffusion_schedule": "cosine"}
    return SimpleNamespace(**{**base, **kw})


def cont_spec(low=(-1.0, -1.0), high=(1.0, 1.0)):
    return PolicySpec(env="point/detour", action_type="continuous", action_dim=len(low), action_low=list(low),
                      action_high=list(high), state_dim=4, state_mean=[0.0] * 4, state_std=[1.0] * 4)


def make_policy(head="flow", **kw):
    torch.manual_seed(0)
    cfg = PolicyConfig(vision="none", language="none", fusion="early", head=head, d_model=32, num_heads=4, d_ff=64,
                       num_layers=1, gen_hidden=32, gen_layers=1, **{"chunk": 4, **kw})
    return VLAPolicy(cfg, cont_spec())


def point_batch(b=16, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(b, 1, 4, generator=g)
    act = torch.tanh(state[:, 0, :2]).unsqueeze(1).repeat(1, k, 1)  # (B, K, A)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[0, 2:] = False  # an episode end inside a chunk
    return {"state": state, "obs_mask": torch.ones(b, 1, dtype=torch.bool), "instruction": ["go"] * b,
            "action": act, "action_mask": mask}


def bimodal_fit(head, steps=300, n=256):
    """Train ``head`` on a constant condition whose target chunk is +0.8 or -0.8 (each half of the time)."""
    torch.manual_seed(0)
    cond = torch.ones(n, 8)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        sign = torch.randint(0, 2, (n, 1, 1)).float() * 2 - 1
        target = 0.8 * sign.expand(n, 2, 1)  # (B, K=2, A=1)
        loss = head.entry_loss(head(cond), target, LossConfig(continuous="mse")).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return cond, losses


# ------------------------------------------------------------------------------------------------ the heads
def test_generative_heads_are_registered():
    assert {"flow", "diffusion"} <= set(HEADS.names())
    assert PolicyConfig(head="flow").head == "flow"


@pytest.mark.parametrize("kind", GENERATIVE)
def test_loss_finite_and_decreases_on_a_toy_problem(kind):
    head = HEADS.get(kind)(8, cont_spec(), head_cfg())
    _, losses = bimodal_fit(head, steps=150)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:20])


@pytest.mark.parametrize("kind", GENERATIVE)
@pytest.mark.parametrize("steps", [1, 3])
def test_samples_have_chunk_shape_and_stay_within_bounds(kind, steps):
    spec = cont_spec(low=(-2.0, 0.0), high=(2.0, 0.5))
    head = HEADS.get(kind)(8, spec, head_cfg(chunk=3)).eval()
    with torch.no_grad():  # random weights: large outputs, which must be clipped to the bounds
        for p in head.net.out.parameters():
            p.normal_(0, 5.0)
    a = head.sample(torch.randn(5, 8), torch.Generator().manual_seed(0), steps=steps)
    assert a.shape == (5, 3, 2)
    assert (a[..., 0] >= -2).all() and (a[..., 0] <= 2).all() and (a[..., 1] >= 0).all() and (a[..., 1] <= 0.5).all()
    # normalisation round trip inside the bounds
    x = torch.tensor([[-2.0, 0.0], [0.5, 0.25], [2.0, 0.5]])
    torch.testing.assert_close(head.unnormalize(head.normalize(x)), x)
    torch.testing.assert_close(head.normalize(x)[0], torch.tensor([-1.0, -1.0]))


@pytest.mark.parametrize("kind", GENERATIVE)
def test_sampling_is_deterministic_given_the_generator(kind):
    head = HEADS.get(kind)(8, cont_spec(), head_cfg()).eval()
    with torch.no_grad():
        head.net.out.weight.normal_(0, 0.5)
    c = torch.randn(4, 8)
    a1 = head.pick(head(c), False, 1.0, torch.Generator().manual_seed(7))
    a2 = head.pick(head(c), False, 1.0, torch.Generator().manual_seed(7))
    a3 = head.pick(head(c), False, 1.0, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a1, a2)
    assert not torch.allclose(a1, a3)


@pytest.mark.parametrize("kind", GENERATIVE)
def test_discrete_action_space_is_refused_with_a_clear_message(kind):
    spec = PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4)
    with pytest.raises(ValueError, match=f"{kind}.*continuous action chunks.*discrete"):
        HEADS.get(kind)(8, spec, head_cfg())


def test_beta_schedules_end_in_noise():
    for kind in ("cosine", "linear"):
        ab = torch.cumprod(1 - beta_schedule(kind, 100), 0)
        assert ab[0] > 0.97 and ab[-1] < 0.01 and (ab[1:] <= ab[:-1]).all()
    head = DiffusionHead(8, cont_spec(), head_cfg(diffusion_train_steps=50))
    assert head.timesteps(5) == [49, 37, 24, 12, 0] and head.timesteps(500)[:2] == [49, 48]


def test_flow_and_diffusion_keep_both_modes_where_regression_averages():
    spec = cont_spec(low=(-1.0,), high=(1.0,))
    reg = ContinuousHead(8, spec, head_cfg())
    cond, _ = bimodal_fit(reg)
    reg_out = reg(cond[:200]).detach()
    assert reg_out.abs().max() < 0.3  # the mean of +-0.8: the middle, where no demonstration goes
    for kind in GENERATIVE:
        head = HEADS.get(kind)(8, spec, head_cfg())
        bimodal_fit(head)
        a = head.eval().sample(cond[:200], torch.Generator().manual_seed(0))[:, 0, 0]  # (200,)
        assert (a.abs() > 0.5).float().mean() > 0.85, kind  # samples land on a mode
        assert 0.15 < (a > 0).float().mean() < 0.85, kind  # and on both


# ------------------------------------------------------------------------------------------------ in a policy
@pytest.mark.parametrize("kind", GENERATIVE)
def test_policy_trains_through_bc_loss_and_scores_offline(kind):
    p = make_policy(kind)
    opt = torch.optim.AdamW(p.parameters(), lr=3e-3)
    losses = []
    for i in range(40):
        loss, m = p(point_batch(seed=i % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    p.eval()
    _, m1 = p(point_batch(seed=9))
    _, m2 = p(point_batch(seed=9))
    assert "action_l1" in m and float(m1["action_l1"]) == float(m2["action_l1"])  # fixed-seed offline metric


@pytest.mark.parametrize("kind", GENERATIVE)
def test_rollouts_reproducible_after_reset_and_checkpoint_round_trip(kind, tmp_path):
    p = make_policy(kind, execute=2).eval()
    with torch.no_grad():
        p.action_head.net.out.weight.normal_(0, 0.3)
    obs = {"state": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "instruction": ["go"] * 3}

    def roll(policy):
        policy.reset()
        return np.stack([policy.select_action(obs) for _ in range(5)])  # (5, 3, 2)

    first = roll(p)
    assert first.shape == (5, 3, 2) and first.dtype == np.float32 and np.abs(first).max() <= 1.0
    np.testing.assert_array_equal(first, roll(p))
    p.save_pretrained(tmp_path / "pol")
    q = load_policy(tmp_path / "pol").eval()
    assert q.head_kind == kind
    np.testing.assert_allclose(roll(q), first, atol=1e-6)
    steps_key = "flow_steps" if kind == "flow" else "diffusion_steps"
    setattr(q.cfg, steps_key, 1)  # settable at acting time
    assert not np.allclose(roll(q), first)


# ------------------------------------------------------------------------------------------------ chunk execution
class Counter:
    """A stand-in for ``predict_chunk``: the n-th call returns chunks whose entries are ``100 n + step``."""

    def __init__(self, k: int, a: int = 2) -> None:
        self.k, self.a, self.calls = k, a, 0

    def __call__(self, batch, sample=None):
        b = len(batch["instruction"])
        v = 100.0 * self.calls + torch.arange(self.k, dtype=torch.float32)  # (K,)
        self.calls += 1
        return v.view(1, self.k, 1).expand(b, self.k, self.a).clone()  # (B, K, A)


def _act(p, steps, n=2):
    obs = {"state": np.zeros((n, 4), np.float32), "instruction": ["go"] * n}
    return np.stack([p.select_action(obs)[:, 0] for _ in range(steps)])  # (steps, N)


@pytest.mark.parametrize("head", ["continuous", "flow"])
def test_receding_horizon_executes_the_first_actions_then_replans(head):
    p = make_policy(head, chunk=4, execute=2).eval()
    p.predict_chunk = Counter(4)
    p.reset()
    acts = _act(p, 6)
    np.testing.assert_array_equal(acts[:, 0], [0, 1, 100, 101, 200, 201])
    assert p.predict_chunk.calls == 3
    whole = make_policy(head, chunk=4).eval()  # execute 0: the whole chunk
    whole.predict_chunk = Counter(4)
    whole.reset()
    np.testing.assert_array_equal(_act(whole, 6)[:, 0], [0, 1, 2, 3, 100, 101])


def test_temporal_ensembling_weights_older_predictions_exponentially():
    preds = np.array([[1.0], [2.0], [4.0]])
    w = np.exp(-0.5 * np.arange(3))
    np.testing.assert_allclose(temporal_ensemble(preds, 0.5), [(w * preds[:, 0]).sum() / w.sum()], rtol=1e-6)
    np.testing.assert_allclose(temporal_ensemble(preds, 0.0), [7 / 3], rtol=1e-6)


@pytest.mark.parametrize("head", ["continuous", "diffusion"])
def test_temporal_ensembling_averages_every_chunk_covering_the_step(head):
    m = 0.1
    p = make_policy(head, chunk=3, ensemble=True, ensemble_decay=m).eval()
    p.predict_chunk = Counter(3)
    p.reset()
    acts = _act(p, 4)
    assert p.predict_chunk.calls == 4  # a new chunk every step
    w = np.exp(-m * np.arange(3))
    # step t is predicted by the chunks of steps t-2, t-1, t (oldest first): entries 100 c + (t - c)
    expect = [0.0, (w[0] * 1 + w[1] * 100) / w[:2].sum(),
              (w[0] * 2 + w[1] * 101 + w[2] * 200) / w.sum(), (w[0] * 102 + w[1] * 201 + w[2] * 300) / w.sum()]
    np.testing.assert_allclose(acts[:, 0], expect, rtol=1e-5)
    p.reset([0])  # a new episode in env 0 forgets its chunks; env 1 keeps them
    nxt = _act(p, 1)[0]
    assert nxt[0] == 400.0 and nxt[1] != 400.0
    # re-plan every 2 steps: step 1 acts on chunk 0 alone, step 2 averages chunks 0 and 1
    q = make_policy(head, chunk=3, execute=2, ensemble=True, ensemble_decay=m).eval()
    q.predict_chunk = Counter(3)
    q.reset()
    np.testing.assert_allclose(_act(q, 3)[:, 0], [0, 1, (w[0] * 2 + w[1] * 100) / w[:2].sum()], rtol=1e-5)
    assert q.predict_chunk.calls == 2


def test_chunk_execution_config_is_checked():
    with pytest.raises(ConfigError, match="model.execute"):
        PolicyConfig(chunk=2, execute=3)
    with pytest.raises(ConfigError, match="model.flow_steps"):
        PolicyConfig(flow_steps=0)
    with pytest.raises(ConfigError, match="model.diffusion_schedule"):
        PolicyConfig(diffusion_schedule="sigmoid")
    spec = PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4)
    cfg = PolicyConfig(vision="none", language="none", fusion="early", d_model=32, num_heads=4, chunk=2,
                       ensemble=True)
    with pytest.raises(ValueError, match="model.ensemble.*continuous"):
        VLAPolicy(cfg, spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", GENERATIVE)
def test_sampling_on_cuda_matches_cpu(kind):
    # the noise comes from the acting generator on the CPU, so the same seed gives the same chunk on either device
    p = make_policy(kind).eval()
    with torch.no_grad():
        p.action_head.net.out.weight.normal_(0, 0.3)
    obs = {"state": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "instruction": ["go"] * 3}
    p.reset()
    cpu = p.select_action(obs)
    p.to("cuda").reset()
    np.testing.assert_allclose(p.select_action(obs), cpu, atol=1e-4)


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_offline_metrics_score_generative_heads_through_the_head(kind):
    """eval's offline pass asks the head for its entry scores (no per-kind decoding in eval)."""
    from vlafoundry.eval.offline import _entry_scores

    p = make_policy(kind).eval()
    batch = point_batch(seed=3)
    b = p.prepare(batch)
    with torch.no_grad():
        sample, correct, err = _entry_scores(p, p.action_outputs(p.features(p.encode(b))), b)
    m = int(batch["action_mask"].sum())
    assert sample.shape == correct.shape == err.shape == (m,) and not correct.any()
    assert torch.isfinite(err).all() and (err >= 0).all()
