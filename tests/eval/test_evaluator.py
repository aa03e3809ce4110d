"""Tests for vlafoundry.eval.evaluator: recall@k vs brute force, regression metrics, modality balance, bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlafoundry.eval.evaluator import MultimodalEvaluator
from vlafoundry.eval.stats import wilson_interval


def brute_force_recall(v, l, k, pair_ids=None):
    """Loop over queries: hit when any positive is among the top-k (k clamped to N)."""
    n = v.shape[0]
    ids = pair_ids.tolist() if pair_ids is not None else list(range(n))
    sim = F.normalize(v, dim=-1) @ F.normalize(l, dim=-1).T
    kk = min(k, n)
    i2t = t2i = 0
    for i in range(n):
        top = sim[i].topk(kk).indices.tolist()
        i2t += any(ids[j] == ids[i] for j in top)
        top = sim[:, i].topk(kk).indices.tolist()
        t2i += any(ids[j] == ids[i] for j in top)
    return i2t / n, t2i / n


@pytest.mark.parametrize("use_ids", [False, True])
def test_recall_matches_brute_force(use_ids):
    g = torch.Generator().manual_seed(0)
    n = 23
    v = torch.randn(n, 6, generator=g)
    l = v + 1.5 * torch.randn(n, 6, generator=g)  # noisy pairs: recalls strictly between 0 and 1
    ids = torch.randint(0, 12, (n,), generator=g) if use_ids else None
    ev = MultimodalEvaluator()
    ks = (1, 3, 5, 10, 50)
    out = ev.evaluate_alignment(v, l, top_k=ks, pair_ids=ids, chunk_size=7)  # several row blocks
    for k in ks:
        i2t, t2i = brute_force_recall(v, l, k, ids)
        assert out[f"image_to_text_r@{k}"] == pytest.approx(i2t)
        assert out[f"text_to_image_r@{k}"] == pytest.approx(t2i)
    assert 0 < out["image_to_text_r@1"] < 1
    assert out["image_to_text_r@50"] == 1.0  # k > N clamps
    assert ev.metrics["alignment"] is out


def test_recall_perfect_and_collapsed():
    ev = MultimodalEvaluator()
    eye = torch.eye(8)
    out = ev.evaluate_alignment(eye, eye, top_k=1)
    assert out["image_to_text_r@1"] == 1.0 and out["image_to_text_median_rank"] == 1.0
    same = torch.ones(8, 4)  # collapsed embeddings: every candidate ties, ties count against
    out = ev.evaluate_alignment(same, same, top_k=(1, 5))
    assert out["image_to_text_r@1"] == 0.0 and out["text_to_image_r@5"] == 0.0


def test_alignment_bad_inputs():
    ev = MultimodalEvaluator()
    with pytest.raises(ValueError, match="lang_features"):
        ev.evaluate_alignment(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="pair_ids"):
        ev.evaluate_alignment(torch.randn(4, 3), torch.randn(4, 3), pair_ids=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="top_k"):
        ev.evaluate_alignment(torch.randn(4, 3), torch.randn(4, 3), top_k=0)


def test_generation_quality():
    ev = MultimodalEvaluator()
    ref = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    gen = torch.tensor([[1.0, 1.0], [0.0, 2.0], [2.0, 2.0]])
    out = ev.evaluate_generation_quality(gen, ref)
    assert out["mse"] == pytest.approx(3 / 6)
    assert out["mae"] == pytest.approx(3 / 6)
    assert out["rmse"] == pytest.approx(0.5**0.5)
    assert out["cosine_similarity"] == pytest.approx((2**-0.5 + 1 + 1) / 3)
    sst = ((ref - ref.mean(0)) ** 2).sum().item()
    assert out["r2"] == pytest.approx(1 - 3 / sst)
    assert ev.evaluate_generation_quality(ref, ref)["r2"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="generated"):
        ev.evaluate_generation_quality(gen[:2], ref)


class ToyModel(torch.nn.Module):
    """Uses only `image`; `text` is accepted and ignored."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, image=None, text=None):
        b = (text if image is None else image).shape[0]
        feat = image if image is not None else torch.zeros(b, 4)
        return self.lin(feat).squeeze(-1)


def test_modality_balance_ignored_modality_gets_zero_share():
    torch.manual_seed(0)
    model = ToyModel()
    image, text = torch.randn(32, 4), torch.randn(32, 4)
    target = model(image=image).detach() + 0.1

    def metric(out):
        return -F.mse_loss(out, target)

    ev = MultimodalEvaluator()
    out = ev.assess_modality_balance(model, {"image": image, "text": text}, metric)
    assert out["ablation_share"]["text"] == pytest.approx(0.0, abs=1e-9)
    assert out["ablation_share"]["image"] == pytest.approx(1.0)
    assert out["gradient_share"]["text"] == pytest.approx(0.0, abs=1e-9)
    assert out["gradient_share"]["image"] == pytest.approx(1.0)
    assert out["gradient_x_input_share"]["text"] == pytest.approx(0.0, abs=1e-9)
    assert out["ablation_delta"]["image"] > 0  # removing the image makes the (higher-is-better) metric worse
    assert out["metric_full"] == pytest.approx(-0.01, abs=1e-6)
    assert out["dominant_modality"] == "image"
    # A custom absent spec: zeros instead of None.
    out = ev.assess_modality_balance(
        model, {"image": image, "text": text}, metric, absent={"image": {"image": torch.zeros_like(image)}}
    )
    assert out["ablation_share"]["image"] == pytest.approx(1.0)


def test_modality_balance_two_used_modalities_split():
    def model_fn(a=None, b=None):
        a = torch.zeros(8, 3) if a is None else a
        b = torch.zeros(8, 3) if b is None else b
        return (a + 3 * b).sum()

    ev = MultimodalEvaluator()
    out = ev.assess_modality_balance(model_fn, {"a": torch.ones(8, 3), "b": torch.ones(8, 3)}, lambda o: o)
    assert out["ablation_share"]["a"] == pytest.approx(0.25) and out["ablation_share"]["b"] == pytest.approx(0.75)
    assert out["gradient_share"]["a"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="modalities"):
        ev.assess_modality_balance(model_fn, {"a": torch.ones(8, 3)}, lambda o: o, modalities=["c"])


def test_detect_bias():
    ev = MultimodalEvaluator()
    preds = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0])
    truth = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])
    groups = ["full", "full", "full", "full", "no_image", "no_image", "no_image", "no_image"]
    out = ev.detect_multimodal_bias(preds, truth, groups)
    assert out["per_group"]["full"]["accuracy"] == 0.75 and out["per_group"]["full"]["n"] == 4
    assert out["per_group"]["no_image"]["accuracy"] == 0.5
    assert out["per_group"]["full"]["ci"] == wilson_interval(3, 4)
    assert out["worst"] == "no_image" and out["best"] == "full" and out["gap"] == pytest.approx(0.25)
    assert out["overall"]["accuracy"] == pytest.approx(5 / 8)
    # Multi-dimensional items (action chunks) count as correct only when all elements match; lists work too.
    chunks_pred, chunks_true = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 2], [3, 5]])
    out = ev.detect_multimodal_bias(chunks_pred, chunks_true, torch.tensor([0, 0]))
    assert out["per_group"][0]["accuracy"] == 0.5
    assert ev.detect_multimodal_bias(["a", "b"], ["a", "c"], ["x", "y"])["gap"] == 1.0
    with pytest.raises(ValueError, match="group_labels"):
        ev.detect_multimodal_bias([1, 2], [1, 2], ["x"])
