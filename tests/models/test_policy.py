"""VLAPolicy on small synthetic batches shaped like BabyAI / Meta-World data (real-data runs: tests/train)."""

import numpy as np
import pytest
import torch

from vlafoundry.models import ModalityDropoutConfig, PolicyConfig, PolicySpec, VLAPolicy
from vlafoundry.nn.language import TextTokenizer
from vlafoundry.train.config import LossConfig

COLORS = ["red", "green", "blue", "purple", "yellow", "grey"]
OBJECTS = ["ball", "box", "key"]
INSTR = [f"go to the {c} {o}" for c in COLORS for o in OBJECTS]


def babyai_spec():
    return PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4,
                      image_shape=[7, 7, 3], state_mean=[0.25] * 4, state_std=[0.43] * 4)


def mw_spec():
    return PolicySpec(env="metaworld/push", action_type="continuous", action_dim=4, action_low=[-1] * 4,
                      action_high=[1] * 4, state_dim=39, image_shape=None)


def babyai_batch(b=16, t=1, k=1, seed=0):
    g = np.random.default_rng(seed)
    img = np.stack([g.integers(0, 11, (b, t, 7, 7)), g.integers(0, 6, (b, t, 7, 7)), g.integers(0, 3, (b, t, 7, 7))],
                   -1).astype(np.uint8)
    ids = g.integers(0, len(INSTR), b)
    # a learnable rule: the action is determined by the instruction
    act = torch.as_tensor(ids % 7).long().unsqueeze(1).repeat(1, k)
    return {
        "image": torch.as_tensor(img), "state": torch.eye(4)[g.integers(0, 4, (b, t))].float(),
        "obs_mask": torch.ones(b, t, dtype=torch.bool), "instruction": [INSTR[i] for i in ids],
        "instruction_id": torch.as_tensor(ids), "action": act, "action_mask": torch.ones(b, k, dtype=torch.bool),
    }


def mw_batch(b=16, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(b, 1, 39, generator=g)
    tasks = ["push the puck to the goal", "open the drawer"]
    ids = torch.randint(0, 2, (b,), generator=g)
    act = torch.tanh(state[:, 0, :4]).unsqueeze(1).repeat(1, k, 1) * (ids.view(-1, 1, 1) * 2 - 1)
    return {"state": state, "obs_mask": torch.ones(b, 1, dtype=torch.bool), "instruction": [tasks[i] for i in ids],
            "instruction_id": ids, "action": act.float(), "action_mask": torch.ones(b, k, dtype=torch.bool)}


def make(spec, **kw):
    torch.manual_seed(0)
    cfg = PolicyConfig(d_model=32, num_heads=4, d_ff=64, num_layers=1, **kw)
    corpus = INSTR + ["push the puck to the goal", "open the drawer"]
    return VLAPolicy(cfg, spec, TextTokenizer.train(corpus, kind="word"))


def _train(policy, batch_fn, steps=40, loss_cfg=None):
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = []
    for i in range(steps):
        loss, _ = policy(batch_fn(seed=i % 4), loss_cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("fusion", ["cross_attention", "early", "late", "film"])
def test_each_fusion_trains_discrete(fusion):
    p = make(babyai_spec(), fusion=fusion)
    losses = _train(p, babyai_batch)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.parametrize("head", ["continuous", "binned"])
def test_continuous_heads_train_with_chunks(head):
    p = make(mw_spec(), vision="none", head=head, chunk=2, num_bins=32)
    losses = _train(p, mw_batch, steps=60)
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])


def test_every_parameter_gets_gradient_with_all_objectives():
    # modality dropout makes every placeholder (used only for absent inputs) take part too
    md = ModalityDropoutConfig(image=0.5, instruction=0.5, state=0.5)
    p = make(babyai_spec(), fusion="early", moe=True, num_experts=2, modality_dropout=md)
    lc = LossConfig(bc=1.0, contrastive=1.0, itm=1.0, mlm=1.0, mrm=1.0, moe_aux=0.01)
    loss, metrics = p(babyai_batch(b=24), lc)
    loss.backward()
    missing = [n for n, q in p.named_parameters() if q.requires_grad and (q.grad is None or q.grad.abs().sum() == 0)]
    # the binned/continuous heads do not exist for discrete specs; everything built must learn
    assert not missing, missing
    for k in ("bc", "contrastive", "itm", "mlm", "mrm", "moe_aux"):
        assert np.isfinite(metrics[k])


def test_state_fourier_features_train_and_widen_only_the_state_input():
    plain = make(mw_spec(), vision="none", head="continuous")
    p = make(mw_spec(), vision="none", head="continuous", state_fourier=4)
    s = mw_spec().state_dim
    assert plain.state_proj[0].in_features == s and p.state_proj[0].in_features == s * 9
    assert set(p.state_dict()) == set(plain.state_dict())  # no new checkpoint entries beyond the wider weight
    losses = _train(p, mw_batch, steps=60)
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])


@pytest.mark.parametrize("missing", ["image", "instruction", "state"])
def test_select_action_with_missing_modality(missing):
    p = make(babyai_spec(), fusion="film", history=2).eval()
    b = babyai_batch(b=5)
    obs = {"image": b["image"][:, 0].numpy(), "state": b["state"][:, 0].numpy(), "instruction": b["instruction"],
           f"{missing}_present": np.zeros(5, dtype=bool)}
    p.reset()
    for _ in range(3):
        a = p.select_action(obs)
        assert a.shape == (5,) and a.dtype == np.int64 and ((a >= 0) & (a < 7)).all()
    p.reset([0, 2])
    assert p.select_action(obs).shape == (5,)


def test_select_action_chunk_queue_continuous():
    p = make(mw_spec(), vision="none", chunk=3).eval()
    b = mw_batch(b=4, k=3)
    obs = {"state": b["state"][:, 0].numpy(), "instruction": b["instruction"]}
    p.reset()
    acts = [p.select_action(obs) for _ in range(4)]
    assert all(a.shape == (4, 4) and a.dtype == np.float32 and np.abs(a).max() <= 1.0 for a in acts)
    # the first three come from one predicted chunk, the fourth from a new prediction
    chunk = p.predict_chunk({"state": b["state"], "instruction": b["instruction"]}).numpy()
    np.testing.assert_allclose(np.stack(acts[:3], 1), chunk, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    p = make(babyai_spec())
    b = babyai_batch(b=4)
    bad = dict(b, state=torch.randn(4, 1, 5))
    with pytest.raises(ValueError, match="state: expected last dimension 4"):
        p(bad)
    bad = dict(b, image=b["image"][:, :, :5])
    with pytest.raises(ValueError, match=r"image: expected frames of shape \(7, 7, 3\)"):
        p(bad)
    bad = dict(b, state=b["state"].clone())
    bad["state"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="state: expected finite values"):
        p(bad)


def test_sampled_actions_reproducible_after_reset_and_follow_the_softmax():
    p = make(babyai_spec(), fusion="film", action_selection="sample").eval()
    b = babyai_batch(b=6)
    obs = {"image": b["image"][:, 0].numpy(), "state": b["state"][:, 0].numpy(), "instruction": b["instruction"]}
    p.reset()
    first = np.stack([p.select_action(obs) for _ in range(20)])
    p.reset()
    again = np.stack([p.select_action(obs) for _ in range(20)])
    np.testing.assert_array_equal(first, again)
    # with a very low temperature sampling is the argmax; at temperature 1 it varies over steps
    greedy = p.predict_chunk(b, sample=False)[:, 0].numpy()
    p.cfg.sample_temperature = 1e-4
    np.testing.assert_array_equal(p.predict_chunk(b, sample=True)[:, 0].numpy(), greedy)
    assert len({tuple(r) for r in first}) > 1


# ------------------------------------------------------------------------------------------ recurrent memory
def episode_batch(lengths=(5, 2, 4), seed=0):
    """Right-padded whole episodes, as EpisodeDataset serves them; the action at every step is the direction in
    the episode's FIRST state (the others are random), so it needs memory after the first step."""
    g = np.random.default_rng(seed)
    b, l_max = len(lengths), max(lengths)
    img = np.stack([g.integers(0, 11, (b, l_max, 7, 7)), g.integers(0, 6, (b, l_max, 7, 7)),
                    g.integers(0, 3, (b, l_max, 7, 7))], -1).astype(np.uint8)
    mask = torch.arange(l_max)[None] < torch.as_tensor(lengths)[:, None]  # (B, L)
    ids = g.integers(0, len(INSTR), b)
    direction = torch.as_tensor(g.integers(0, 4, (b, l_max)))  # (B, L)
    act = direction[:, :1].repeat(1, l_max) * mask  # (B, L)
    img[~mask.numpy()] = 0
    return {
        "image": torch.as_tensor(img), "state": torch.eye(4)[direction].float() * mask[..., None],
        "seq_mask": mask, "obs_mask": mask, "instruction": [INSTR[i] for i in ids],
        "instruction_id": torch.as_tensor(ids), "action": act.unsqueeze(-1), "action_mask": mask.unsqueeze(-1),
    }


def test_memory_acting_step_by_step_equals_the_episode_forward():
    """select_action, one step at a time with the GRU state carried per env, gives the same logits as the training
    forward over whole right-padded episodes; reset() of one env restarts only its memory."""
    p = make(babyai_spec(), memory="gru").eval()
    p.cfg.action_selection = "greedy"
    b = episode_batch()
    with torch.no_grad():
        pb = p.prepare(b)
        rows, pos = pb["seq"][0], pb["seq"][1]
        full = p.action_outputs(p.features(p.encode(pb)))[:, 0]  # (N, 7) logits of every real step
    n, lengths = 3, b["seq_mask"].sum(1)
    p.reset()
    for t in range(int(lengths.max())):
        obs = {"image": b["image"][:, t].numpy(), "state": b["state"][:, t].numpy(), "instruction": b["instruction"]}
        a = p.select_action(obs)
        assert a.shape == (n,) and a.dtype == np.int64
        for i in range(n):
            if t < lengths[i]:
                j = int(((rows == i) & (pos == t)).nonzero()[0, 0])
                assert a[i] == int(full[j].argmax())
    # reset of env 1 only: its next step equals an episode's first step, env 0 keeps its memory
    h_before = p.acting.memory_h.clone()
    p.reset([1])
    assert torch.equal(p.acting.memory_h[1], torch.zeros(32)) and torch.equal(p.acting.memory_h[0], h_before[0])
    assert not p.stateless and make(babyai_spec()).stateless


def test_memory_learns_what_only_the_first_frame_shows_and_every_parameter_learns():
    """The label at every step is the first step's direction: on fresh episodes a memory policy gets the later
    steps right, the same policy without memory is at chance there (it sees only the current, random direction);
    the GRU and its norm get gradients."""
    def later_step_accuracy(policy, steps):
        opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
        for i in range(steps):
            loss, _ = policy(episode_batch(lengths=(6, 3, 5, 6, 2, 4, 6, 5) * 2, seed=100 + i))
            opt.zero_grad()
            loss.backward()
            opt.step()
        test = episode_batch(lengths=(6,) * 64, seed=1)
        with torch.no_grad():
            pred = policy.action_outputs(policy.features(policy.encode(policy.prepare(test))))[:, 0].argmax(-1)
        pred = pred.view(64, 6)[:, 1:]  # steps after the first (rows are episode-major)
        return float((pred == test["action"][:, 1:, 0]).float().mean())

    mem = make(babyai_spec(), memory="gru", fusion="late")
    acc_mem = later_step_accuracy(mem, 200)
    loss, _ = mem(episode_batch())
    loss.backward()
    for name in ("memory.weight_ih_l0", "memory.weight_hh_l0", "memory_norm.weight"):
        assert dict(mem.named_parameters())[name].grad.abs().sum() > 0, name
    acc_plain = later_step_accuracy(make(babyai_spec(), fusion="late"), 200)  # episodes become steps for it
    assert acc_mem > 0.9 and acc_plain < 0.45, (acc_mem, acc_plain)


def test_memory_config_needs_single_frames_and_single_actions():
    from vlafoundry.config import ConfigError

    with pytest.raises(ConfigError, match="model.memory"):
        PolicyConfig(memory="gru", history=2)
    with pytest.raises(ConfigError, match="model.memory"):
        PolicyConfig(memory="gru", chunk=4)
    with pytest.raises(ConfigError, match="model.memory"):
        PolicyConfig(memory="lstm")
    assert PolicyConfig(memory="gru").dataset_view()["sequence"] is True
