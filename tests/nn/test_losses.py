"""Tests for vlafoundry.nn.losses: InfoNCE against brute force, multi-positive targets, logit-scale clamp,
DDP gather equivalence, MLM / ITM / MRM objectives."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

from vlafoundry.nn.losses import (
    ContrastiveLoss,
    MultimodalContrastiveLearning,
    MultimodalPretrainingTask,
    mean_count_over_ranks,
)
from vlafoundry.train.distributed import cleanup

# float64 throughout the equivalence tests: brute force and vectorised agree to rounding (atol 1e-10).
ATOL64 = 1e-10


def brute_force_infonce(v: torch.Tensor, l: torch.Tensor, scale: float, pair_ids: torch.Tensor | None = None):
    """Per-row symmetric InfoNCE with multi-positive uniform targets, written as explicit loops."""
    b = v.shape[0]
    ids = pair_ids.tolist() if pair_ids is not None else list(range(b))
    v = v / v.norm(dim=-1, keepdim=True)
    l = l / l.norm(dim=-1, keepdim=True)
    total_v, total_l = 0.0, 0.0
    for i in range(b):
        pos = [j for j in range(b) if ids[j] == ids[i]]
        sv = torch.stack([scale * (v[i] * l[j]).sum() for j in range(b)])
        sl = torch.stack([scale * (l[i] * v[j]).sum() for j in range(b)])
        log_zv, log_zl = torch.logsumexp(sv, 0), torch.logsumexp(sl, 0)
        total_v = total_v + sum(-(sv[p] - log_zv) for p in pos) / len(pos)
        total_l = total_l + sum(-(sl[p] - log_zl) for p in pos) / len(pos)
    return 0.5 * (total_v / b + total_l / b)


@pytest.mark.parametrize("use_ids", [False, True])
def test_infonce_matches_brute_force_forward_and_grad(use_ids):
    g = torch.Generator().manual_seed(0)
    b, d = 7, 5
    v = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    l = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 0, 2, 2, 2, 3]) if use_ids else None
    loss_fn = ContrastiveLoss(temperature=0.1)
    loss = loss_fn(v, l, ids)
    ref = brute_force_infonce(v, l, 10.0, ids)
    assert torch.allclose(loss, ref, atol=ATOL64, rtol=0)
    gv, gl = torch.autograd.grad(loss, (v, l))
    rv, rl = torch.autograd.grad(ref, (v, l))
    assert torch.allclose(gv, rv, atol=ATOL64, rtol=0)
    assert torch.allclose(gl, rl, atol=ATOL64, rtol=0)


def test_pair_ids_all_distinct_equals_diagonal():
    g = torch.Generator().manual_seed(1)
    v, l = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    fn = ContrastiveLoss()
    assert torch.allclose(fn(v, l), fn(v, l, torch.arange(6) * 3), atol=1e-6)


def test_multi_positive_target_is_uniform_over_positives():
    # Rows 0 and 1 share an instruction. With identical text features the best any target can do is log 2 on
    # those rows; the multi-positive loss also does not depend on which of the two positives a row is paired with.
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    l = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    fn = ContrastiveLoss(temperature=0.01)
    ids = torch.tensor([5, 5, 9])
    assert fn(v, l, ids).item() == pytest.approx(2.0 / 3.0 * math.log(2.0), abs=1e-4)
    g = torch.Generator().manual_seed(3)
    v2, l2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    swapped = l2[[1, 0, 2]]
    assert torch.allclose(fn(v2, l2, ids), fn(v2, swapped, ids), atol=1e-5)
    assert not torch.allclose(fn(v2, l2), fn(v2, swapped), atol=1e-3)  # diagonal labels do depend on it


def test_similarity_is_scaled_cosine():
    g = torch.Generator().manual_seed(2)
    v, l = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    fn = ContrastiveLoss(temperature=0.5)
    ref = 2.0 * F.cosine_similarity(v[:, None, :], l[None, :, :], dim=-1)
    assert fn.similarity(v, l).shape == (3, 5)
    assert torch.allclose(fn.similarity(v, l), ref, atol=1e-6)


def test_learnable_scale_init_and_clamp():
    fn = ContrastiveLoss(temperature=0.07, learnable_scale=True, max_logit_scale=100.0)
    assert isinstance(fn.log_logit_scale, torch.nn.Parameter)
    assert fn.log_logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    assert fn.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    v, l = torch.randn(4, 3), torch.randn(4, 3)
    fn(v, l).backward()
    assert fn.log_logit_scale.grad is not None and fn.log_logit_scale.grad.abs() > 0
    with torch.no_grad():
        fn.log_logit_scale.fill_(math.log(1000.0))
    fn.log_logit_scale.grad = None
    assert fn.logit_scale.item() == pytest.approx(100.0, rel=1e-5)
    assert torch.allclose(fn.similarity(v, l), 100.0 * F.normalize(v, dim=-1) @ F.normalize(l, dim=-1).T, atol=1e-4)
    fn(v, l).backward()
    assert fn.log_logit_scale.grad.item() == 0.0  # clamped: no gradient pushes it further
    fixed = ContrastiveLoss(temperature=0.07, learnable_scale=False)
    assert not any(True for _ in fixed.parameters())


def test_contrastive_bad_inputs():
    fn = ContrastiveLoss()
    with pytest.raises(ValueError, match="lang_features"):
        fn(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="lang_features"):
        fn(torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="vision_features"):
        fn(torch.randn(2, 4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="pair_ids"):
        fn(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="pair_ids"):
        fn(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss(temperature=0.0)


def _ddp_worker(rank: int, world: int, out_dir: str, bounds: tuple[int, ...] = (0, 4, 8)) -> None:
    import torch.distributed as dist

    # File rendezvous: no TCP port to race for with other processes on the machine.
    init = "file://" + os.path.join(out_dir, "rendezvous")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        v_all, l_all, ids_all = _ddp_data()
        rows = slice(bounds[rank], bounds[rank + 1])
        result = {}
        for use_ids in (False, True):
            v = v_all[rows].clone().requires_grad_(True)
            l = l_all[rows].clone().requires_grad_(True)
            loss = ContrastiveLoss(temperature=0.2)(v, l, ids_all[rows] if use_ids else None)
            loss.backward()
            result[use_ids] = {"loss": loss.detach(), "gv": v.grad, "gl": l.grad}
        torch.save(result, os.path.join(out_dir, f"r{rank}.pt"))
        dist.barrier()
    finally:
        cleanup()  # destroy the group and free it before shutdown (see vlafoundry.train.distributed.cleanup)


def _ddp_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(8, 5, generator=g, dtype=torch.float64)
    l = torch.randn(8, 5, generator=g, dtype=torch.float64)
    return v, l, torch.tensor([0, 1, 0, 2, 1, 3, 3, 0])


def test_distributed_gather_equals_global_batch():
    """2 gloo ranks x 4 rows == 1 process x 8 rows, with and without pair_ids: the loss is the rank mean and the
    feature gradients (DDP averages parameter gradients over ranks, hence the 1/world factor) equal the
    global-batch gradients. float64, atol 1e-10."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, tmp), nprocs=2, join=True)
        res = [torch.load(os.path.join(tmp, f"r{r}.pt")) for r in range(2)]
    v_all, l_all, ids_all = _ddp_data()
    for use_ids in (False, True):
        v, l = v_all.clone().requires_grad_(True), l_all.clone().requires_grad_(True)
        ref = ContrastiveLoss(temperature=0.2)(v, l, ids_all if use_ids else None)
        ref.backward()
        r0, r1 = res[0][use_ids], res[1][use_ids]
        assert torch.allclose((r0["loss"] + r1["loss"]) / 2, ref.detach(), atol=ATOL64)
        assert torch.allclose(torch.cat([r0["gv"], r1["gv"]]) / 2, v.grad, atol=ATOL64)
        assert torch.allclose(torch.cat([r0["gl"], r1["gl"]]) / 2, l.grad, atol=ATOL64)


def _rows_loss(v: torch.Tensor, l: torch.Tensor, rows: slice, ids: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Brute force: the symmetric InfoNCE of ``rows`` against every column (one rank's loss), mean over its rows."""
    vn, ln = torch.nn.functional.normalize(v, dim=-1), torch.nn.functional.normalize(l, dim=-1)
    idx = torch.arange(v.shape[0])[rows]
    if ids is None:
        targets = (idx[:, None] == torch.arange(v.shape[0])[None]).double()
    else:
        targets = (ids[idx][:, None] == ids[None]).double()
    targets = targets / targets.sum(-1, keepdim=True)
    a = -(targets * torch.log_softmax(scale * vn[idx] @ ln.T, -1)).sum(-1).mean()
    b = -(targets * torch.log_softmax(scale * ln[idx] @ vn.T, -1)).sum(-1).mean()
    return 0.5 * (a + b)


def test_distributed_gather_with_unequal_rank_batches():
    """Ranks holding different numbers of rows (3 and 5: the steps of whole episodes): each rank's loss is its rows'
    summed loss against all 8 columns over the mean rows per rank (4), so the rank losses add up to the global mean
    and the features' gradients, averaged over ranks as DDP does, equal one process's (brute force, float64)."""
    import torch.multiprocessing as mp

    bounds = (0, 3, 8)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, tmp, bounds), nprocs=2, join=True)
        res = [torch.load(os.path.join(tmp, f"r{r}.pt")) for r in range(2)]
    v_all, l_all, ids_all = _ddp_data()
    for use_ids in (False, True):
        v, l = v_all.clone().requires_grad_(True), l_all.clone().requires_grad_(True)
        ids = ids_all if use_ids else None
        parts = [_rows_loss(v, l, slice(bounds[r], bounds[r + 1]), ids, 1 / 0.2) * (bounds[r + 1] - bounds[r]) / 4
                 for r in range(2)]
        ref = ContrastiveLoss(temperature=0.2)(v_all, l_all, ids)
        assert torch.allclose((parts[0] + parts[1]).detach() / 2, ref, atol=ATOL64)  # the global-batch mean
        sum(parts).backward()
        for r in range(2):
            got = res[r][use_ids]
            rows = slice(bounds[r], bounds[r + 1])
            assert torch.allclose(got["loss"], parts[r].detach(), atol=ATOL64)
            assert torch.allclose(got["gv"], v.grad[rows], atol=ATOL64)
            assert torch.allclose(got["gl"], l.grad[rows], atol=ATOL64)


def test_multimodal_contrastive_learning_shapes_and_grads():
    m = MultimodalContrastiveLearning(vision_dim=6, lang_dim=4, d_model=8)
    loss, vp, lp = m(torch.randn(5, 6), torch.randn(5, 4), torch.tensor([0, 0, 1, 2, 3]))
    assert vp.shape == (5, 8) and lp.shape == (5, 8) and loss.dim() == 0
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="lang_features"):
        m(torch.randn(5, 6), torch.randn(5, 3))


# ---------------------------------------------------------------- MLM

SPECIAL = (0, 1, 2, 3)  # pad, cls, sep, mask
MASK_ID = 3


def _batch(b: int, length: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (b, length), generator=g)
    lengths = torch.randint(3, length + 1, (b,), generator=g)
    valid = torch.arange(length)[None, :] < lengths[:, None]
    ids[:, 0] = 1
    ids[torch.arange(b), lengths - 1] = 2
    ids[~valid] = 0
    return ids, valid


def test_mask_tokens_statistics():
    task = MultimodalPretrainingTask(d_model=8, vocab_size=500)
    ids, valid = _batch(1024, 48, 500)
    masked, labels = task.mask_tokens(ids, valid, MASK_ID, 500, SPECIAL, generator=torch.Generator().manual_seed(1))
    eligible = valid & ~torch.isin(ids, torch.tensor(SPECIAL))
    selected = labels != -100
    frac = selected.sum().item() / eligible.sum().item()
    assert abs(frac - 0.15) < 0.01  # ~26k eligible: sampling std ~0.002
    assert not (selected & ~eligible).any()  # specials and padding never selected
    assert torch.equal(labels[selected], ids[selected]) and (labels[~selected] == -100).all()
    assert torch.equal(masked[~selected], ids[~selected])  # nothing else changes
    n = selected.sum().item()
    to_mask = (masked == MASK_ID) & selected
    unchanged = (masked == ids) & selected
    replaced = selected & ~to_mask & ~unchanged
    assert abs(to_mask.sum().item() / n - 0.8) < 0.03
    assert abs(replaced.sum().item() / n - 0.1) < 0.02
    assert abs(unchanged.sum().item() / n - 0.1) < 0.02
    assert not torch.isin(masked[replaced], torch.tensor(SPECIAL)).any()  # random tokens are never special
    assert (selected.sum(dim=1) >= 1).all()  # every row has eligible tokens here -> at least one mask


def test_mask_tokens_forces_one_and_handles_no_eligible():
    task = MultimodalPretrainingTask(d_model=8, vocab_size=50, mask_prob=0.01)
    ids = torch.tensor([[1, 10, 11, 2, 0], [1, 2, 0, 0, 0]])
    valid = ids != 0
    for seed in range(20):
        _, labels = task.mask_tokens(ids, valid, MASK_ID, 50, SPECIAL, generator=torch.Generator().manual_seed(seed))
        assert (labels[0] != -100).sum() >= 1
        assert ((labels[0] != -100) <= torch.tensor([False, True, True, False, False])).all()
        assert (labels[1] == -100).all()  # only specials: nothing to mask
    with pytest.raises(ValueError, match="attention_mask"):
        task.mask_tokens(ids, valid.long(), MASK_ID, 50, SPECIAL)
    with pytest.raises(ValueError, match="ids"):
        task.mask_tokens(ids.float(), valid, MASK_ID, 50, SPECIAL)


def test_mlm_loss_only_masked_positions():
    torch.manual_seed(0)
    task = MultimodalPretrainingTask(d_model=8, vocab_size=37)
    feats = torch.randn(3, 6, 8, requires_grad=True)
    labels = torch.full((3, 6), -100)
    labels[0, 1], labels[1, 4], labels[2, 0], labels[2, 5] = 5, 36, 0, 11
    loss = task.mlm_loss(feats, labels)
    logits = task(None, feats, task_type="mlm")
    assert logits.shape == (3, 6, 37)
    sel = labels != -100
    ref = F.cross_entropy(logits[sel], labels[sel])
    assert torch.allclose(loss, ref, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, feats)
    assert (grad[~sel] == 0).all() and (grad[sel].abs().sum(-1) > 0).all()
    none = task.mlm_loss(feats, torch.full((3, 6), -100))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="labels"):
        task.mlm_loss(feats, labels[:, :5])


# ---------------------------------------------------------------- ITM


def test_itm_head_width_and_forward():
    task = MultimodalPretrainingTask(d_model=8, vocab_size=20)
    assert task.itm_head.in_features == 16 and task.itm_head.out_features == 2
    out = task(torch.randn(4, 9, 8), torch.randn(4, 5, 8), task_type="itm")
    assert out.shape == (4, 2)
    assert task(torch.randn(4, 8), torch.randn(4, 8), task_type="itm").shape == (4, 2)
    with pytest.raises(ValueError, match="task_type"):
        task(None, torch.randn(4, 5, 8), task_type="xyz")


def test_hard_negative_never_positive_and_follows_softmax():
    ids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 0])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        sim = torch.randn(8, 8, generator=g) * 5
        idx = MultimodalPretrainingTask.mine_hard_negatives(sim, ids, generator=g)
        assert (idx != torch.arange(8)).all()
        assert (ids[idx] != ids).all()
    # Rows without any negative get -1.
    same = torch.zeros(3, dtype=torch.long)
    assert (MultimodalPretrainingTask.mine_hard_negatives(torch.randn(3, 3), same) == -1).all()
    # Sampling frequency follows softmax over non-positives: row 0 chooses among columns 1, 2 with logits 0, log 3.
    sim = torch.tensor([[9.0, 0.0, math.log(3.0)], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    big = torch.stack([MultimodalPretrainingTask.mine_hard_negatives(sim, None, generator=g)[0] for _ in range(1000)])
    assert (big != 0).all()
    assert abs((big == 2).float().mean().item() - 0.75) < 0.05  # std ~0.014


def test_itm_loss_matches_manual_and_trains_head():
    torch.manual_seed(0)
    task = MultimodalPretrainingTask(d_model=8, vocab_size=20)
    v, l = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    sim = torch.randn(6, 6)
    ids = torch.tensor([0, 1, 1, 2, 3, 4])
    loss, acc = task.itm_loss(v, l, sim, ids, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    nt = task.mine_hard_negatives(sim, ids, g)
    ni = task.mine_hard_negatives(sim.T, ids, g)
    vv, ll = torch.cat([v, v, v[ni]]), torch.cat([l, l[nt], l])
    logits = task.itm_head(torch.cat([vv * ll, (vv - ll).abs()], dim=-1))
    target = torch.cat([torch.ones(6), torch.zeros(12)]).long()
    ce = F.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(loss, 0.5 * (ce[:6].mean() + ce[6:].mean()), atol=1e-6)  # the classes weigh the same
    right = (logits.argmax(-1) == target).float()
    assert acc.item() == pytest.approx(0.5 * (right[:6].mean() + right[6:].mean()).item())  # balanced accuracy
    loss.backward()
    assert task.itm_head.weight.grad.abs().sum() > 0 and v.grad is not None


def test_itm_constant_answer_scores_half_and_head_learns_matching():
    """A head that says "no match" to everything scores 0.5 (not the 2/3 share of negatives); and the head can
    learn to tell matched pairs from mismatched ones on fixed features (with ``cat([v, l])`` it could not: every
    v and every l is in one matched and one mismatched pair, so ``f(v) + g(l)`` carries no signal)."""
    torch.manual_seed(0)
    task = MultimodalPretrainingTask(d_model=16, vocab_size=20)
    with torch.no_grad():
        task.itm_head.weight.zero_()
        task.itm_head.bias.copy_(torch.tensor([5.0, 0.0]))  # always "no match"
    v = torch.randn(32, 16)
    ids = torch.arange(32)
    _, acc = task.itm_loss(v, v.clone(), torch.zeros(32, 32), ids)
    assert acc.item() == pytest.approx(0.5)
    task.itm_head.reset_parameters()
    opt = torch.optim.Adam(task.itm_head.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        x = torch.randn(32, 16, generator=g)
        loss, _ = task.itm_loss(x, x + 0.1 * torch.randn(32, 16, generator=g), torch.zeros(32, 32), ids, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(64, 16, generator=g)
    _, acc = task.itm_loss(x, x + 0.1 * torch.randn(64, 16, generator=g), torch.zeros(64, 64), torch.arange(64),
                           generator=g)
    assert acc.item() > 0.9


# ---------------------------------------------------------------- MRM


def test_mask_patches_and_mrm_loss_only_masked():
    g = torch.Generator().manual_seed(0)
    pm = MultimodalPretrainingTask.mask_patches(400, 50, 0.3, generator=g)
    assert pm.dtype == torch.bool and pm.shape == (400, 50)
    assert abs(pm.float().mean().item() - 0.3) < 0.02 and (pm.sum(1) >= 1).all()
    task = MultimodalPretrainingTask(d_model=8, vocab_size=20, patch_dim=5)
    pred = torch.randn(2, 4, 8, requires_grad=True)
    tgt = torch.randn(2, 4, 5)
    mask = torch.tensor([[True, False, False, True], [False, False, True, False]])
    loss = task.mrm_loss(pred, tgt, mask)
    out = task(pred, None, task_type="mrm")
    assert out.shape == (2, 4, 5)
    assert torch.allclose(loss, ((out - tgt) ** 2)[mask].mean(), atol=1e-6)
    (grad,) = torch.autograd.grad(loss, pred)
    assert (grad[~mask] == 0).all() and (grad[mask].abs().sum(-1) > 0).all()
    with pytest.raises(ValueError, match="target_patch_features"):
        task.mrm_loss(pred, torch.randn(2, 4, 8), mask)
    with pytest.raises(ValueError, match="patch_mask"):
        task.mrm_loss(pred, tgt, mask.float())


# ---------------------------------------------------------------- per-term losses and DDP normalisation


def test_reduction_none_gives_per_term_losses_whose_mean_is_the_loss():
    torch.manual_seed(0)
    task = MultimodalPretrainingTask(d_model=8, vocab_size=37, patch_dim=5)
    feats = torch.randn(3, 6, 8)
    labels = torch.full((3, 6), -100)
    labels[0, 1], labels[1, 4], labels[2, 0] = 5, 36, 0
    per = task.mlm_loss(feats, labels, reduction="none")
    assert per.shape == (3,)
    torch.testing.assert_close(per.mean(), task.mlm_loss(feats, labels), rtol=0, atol=1e-6)
    empty = task.mlm_loss(feats.requires_grad_(True), torch.full((3, 6), -100), reduction="none")
    assert empty.shape == (0,) and empty.sum().requires_grad
    pred, tgt = torch.randn(2, 4, 8), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, False, False, True], [False, False, True, False]])
    per = task.mrm_loss(pred, tgt, mask, reduction="none")
    assert per.shape == (3,)
    torch.testing.assert_close(per.mean(), task.mrm_loss(pred, tgt, mask), rtol=0, atol=1e-6)
    v, l, sim = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 6)
    per, acc = task.itm_loss(v, l, sim, generator=torch.Generator().manual_seed(3), reduction="none")
    mean, acc2 = task.itm_loss(v, l, sim, generator=torch.Generator().manual_seed(3))
    assert per.shape == (18,) and acc == acc2  # 6 positives + 6 + 6 mined negatives
    torch.testing.assert_close(per.mean(), mean, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        task.mlm_loss(feats, labels, reduction="sum")
    assert mean_count_over_ranks(torch.tensor(0)).item() == 1.0  # no process group: the count, at least 1
    assert mean_count_over_ranks(torch.tensor(7)).item() == 7.0


def _mlm_rank_data() -> tuple[torch.Tensor, torch.Tensor]:
    """(2, 4, 8) features per rank and labels with 1 masked token on rank 0, 5 on rank 1."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 2, 4, 8, generator=g, dtype=torch.float64)
    labels = torch.full((2, 2, 4), -100)
    labels[0, 0, 2] = 3
    labels[1, 0, :3] = torch.tensor([1, 4, 6])
    labels[1, 1, 1:3] = torch.tensor([0, 2])
    return feats, labels


def _mlm_ddp_worker(rank: int, world: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="file://" + os.path.join(out_dir, "rendezvous"), rank=rank,
                            world_size=world)  # fmt: skip
    try:
        torch.manual_seed(0)
        task = MultimodalPretrainingTask(d_model=8, vocab_size=7).double()
        feats, labels = _mlm_rank_data()
        per = task.mlm_loss(feats[rank], labels[rank], reduction="none")
        loss = per.sum() / mean_count_over_ranks(torch.tensor(per.numel()))
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": task.mlm_head.weight.grad}, os.path.join(out_dir, f"r{rank}.pt"))
        dist.barrier()
    finally:
        cleanup()  # destroy the group and free it before shutdown (see vlafoundry.train.distributed.cleanup)


def test_summed_loss_over_mean_count_equals_the_global_mean_under_ddp():
    """2 gloo ranks holding 1 and 5 masked tokens: each rank's summed MLM loss over the mean count over ranks (3)
    makes DDP's averaged gradient (and the mean of the rank losses) equal to one process's mean over all 6 tokens;
    a per-rank mean would weight rank 0's single token 5x (float64, atol 1e-10)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_mlm_ddp_worker, args=(2, tmp), nprocs=2, join=True)
        res = [torch.load(os.path.join(tmp, f"r{r}.pt")) for r in range(2)]
    torch.manual_seed(0)
    task = MultimodalPretrainingTask(d_model=8, vocab_size=7).double()
    feats, labels = _mlm_rank_data()
    ref = task.mlm_loss(feats.flatten(0, 1), labels.flatten(0, 1))  # one process, the global batch
    ref.backward()
    assert torch.allclose((res[0]["loss"] + res[1]["loss"]) / 2, ref.detach(), atol=ATOL64)
    assert torch.allclose((res[0]["grad"] + res[1]["grad"]) / 2, task.mlm_head.weight.grad, atol=ATOL64)
    per_rank_means = [task.mlm_loss(feats[r], labels[r]) for r in range(2)]
    assert not torch.allclose(sum(per_rank_means) / 2, ref, atol=1e-3)  # what the old per-rank mean gave
