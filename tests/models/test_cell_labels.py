"""loss.cells: the patch tokens predict each cell's labels; against a brute-force cross-entropy, gradients, config
checks, and a short training run on real BabyAI RGB demonstrations whose labels come from the frames."""

from __future__ import annotations

import json

import pytest
import torch

from vlafoundry.config import ConfigError
from vlafoundry.models import ModalityDropoutConfig, PolicyConfig, PolicySpec, VLAPolicy
from vlafoundry.nn.language import TextTokenizer
from vlafoundry.nn.vision import CELL_LABEL_CLASSES, PatchMLPStem, VisionEncoder
from vlafoundry.train.config import LossConfig

TASKS = ["put the red ball next to the blue key", "put the green box next to the grey ball"]


def spec(shape=(16, 16, 3)):
    return PolicySpec(env="babyai/PutNextLocal", action_type="discrete", num_actions=7, action_dim=1, state_dim=4,
                      image_shape=list(shape), state_mean=[0.0] * 4, state_std=[1.0] * 4)


def make(stem="patch", **kw):
    torch.manual_seed(0)
    kw = {"vision_layers": 0, **kw}
    cfg = PolicyConfig(vision="patch", patch_size=8, vision_stem=stem, cell_labels="minigrid", d_model=32,
                       num_heads=4, d_ff=64, num_layers=1, **kw)
    return VLAPolicy(cfg, spec(), TextTokenizer.train(TASKS, kind="word"))


def batch(b=6, t=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randint(-1, n, (b, t, 2, 2), generator=g) for n in CELL_LABEL_CLASSES["minigrid"]],
                         dim=-1)  # (B, T, R, C, 3), -1 = unknown
    return {"image": torch.randint(0, 256, (b, t, 16, 16, 3), generator=g, dtype=torch.uint8),
            "state": torch.zeros(b, t, 4), "obs_mask": torch.ones(b, t, dtype=torch.bool),
            "instruction": [TASKS[i % 2] for i in range(b)], "action": torch.randint(0, 7, (b,), generator=g),
            "action_mask": torch.ones(b, dtype=torch.bool), "cell_labels": labels,
            "image_present": torch.tensor([True] * (b - 1) + [False])}


def brute_force(p, bt):
    """Mean over labelled (frame, cell, attribute) terms of -log softmax, one term at a time; frames without
    their image do not count."""
    tokens = p.vision_encoder(bt["image"][:, 0])[:, 1:]  # (B, R*C, D)
    w, bias = p.cell_head.weight, p.cell_head.bias
    labels = bt["cell_labels"][:, 0].reshape(len(tokens), -1, 3)
    terms, right, cells = [], 0, 0
    for i in range(len(tokens)):
        if not bt["image_present"][i]:
            continue
        for c in range(tokens.shape[1]):
            logits = tokens[i, c] @ w.T + bias
            start, ok, any_label = 0, True, False
            for a, n in enumerate(CELL_LABEL_CLASSES["minigrid"]):
                part = logits[start:start + n]
                start += n
                y = int(labels[i, c, a])
                if y < 0:
                    continue
                any_label = True
                terms.append(-torch.log_softmax(part, 0)[y])
                ok = ok and int(part.argmax()) == y
            right += int(ok and any_label)
            cells += int(any_label)
    return torch.stack(terms).mean(), right / cells


@pytest.mark.parametrize("stem", ["patch", "mlp"])
def test_cell_loss_matches_a_brute_force_cross_entropy(stem):
    p = make(stem).eval()
    bt = batch()
    loss, m = p(bt, LossConfig(bc=0.0, cells=1.0))
    ref, acc = brute_force(p, bt)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert abs(float(m["cells_acc"]) - acc) < 1e-6
    g_loss = torch.autograd.grad(loss, p.cell_head.weight)[0]
    g_ref = torch.autograd.grad(brute_force(p, bt)[0], p.cell_head.weight)[0]
    torch.testing.assert_close(g_loss, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stem", ["patch", "mlp"])
def test_every_parameter_learns_with_cells_and_bc(stem):
    md = ModalityDropoutConfig(image=0.3, instruction=0.3, state=0.3)  # placeholders take part too
    p = make(stem, vision_layers=1, modality_dropout=md)
    bt = batch(b=12, t=1)
    bt["state"] = torch.randn(12, 1, 4)
    loss, m = p(bt, LossConfig(bc=1.0, cells=1.0, contrastive=1.0, itm=1.0, mlm=1.0, mrm=1.0))
    loss.backward()
    missing = [n for n, q in p.named_parameters() if q.requires_grad and (q.grad is None or q.grad.abs().sum() == 0)]
    assert not missing, missing
    assert {"cells", "cells_acc"} <= set(m)


def test_history_frames_are_labelled_per_frame():
    p = make(history=2).eval()
    bt = batch(t=2)
    loss, _ = p(bt, LossConfig(bc=0.0, cells=1.0))
    one = {k: (v[:, 1:] if k in ("image", "state", "obs_mask", "cell_labels") else v) for k, v in bt.items()}
    two = {k: (v[:, :1] if k in ("image", "state", "obs_mask", "cell_labels") else v) for k, v in bt.items()}
    p1 = make(history=1).eval()
    p1.load_state_dict(p.state_dict())
    l1, _ = p1(one, LossConfig(bc=0.0, cells=1.0))
    l2, _ = p1(two, LossConfig(bc=0.0, cells=1.0))
    # the two frames' terms, pooled (the counts per frame differ, so compare sums of terms)
    n1 = ((one["cell_labels"] >= 0) & one["image_present"].view(-1, 1, 1, 1, 1)).sum()
    n2 = ((two["cell_labels"] >= 0) & two["image_present"].view(-1, 1, 1, 1, 1)).sum()
    torch.testing.assert_close(loss, (l1 * n1 + l2 * n2) / (n1 + n2), rtol=1e-5, atol=1e-6)


def test_patch_mlp_stem_is_a_per_patch_mlp():
    torch.manual_seed(0)
    stem = PatchMLPStem(3, 4, 8)
    x = torch.rand(2, 3, 8, 12)
    out = stem(x)
    assert out.shape == (2, 8, 2, 3)
    patch = x[0, :, 4:8, 8:12].reshape(-1)  # the patch of token (1, 2)
    h = torch.nn.functional.gelu(stem.proj.weight.reshape(8, -1) @ patch + stem.proj.bias)
    torch.testing.assert_close(out[0, :, 1, 2], stem.fc.weight.reshape(8, 8) @ h + stem.fc.bias, rtol=1e-5,
                               atol=1e-6)
    assert VisionEncoder(3, 4, 8, stem="mlp")(x).shape == (2, 1 + 6, 8)
    with pytest.raises(ValueError, match="stem: expected one of"):
        VisionEncoder(3, 4, 8, stem="deep")


@pytest.mark.parametrize("kw,match", [
    ({"vision": "grid", "cell_labels": "minigrid"}, "model.cell_labels"),
    ({"vision": "patch", "cell_labels": "minigrid", "image_shift": 2}, "model.image_shift 0"),
    ({"vision": "patch", "cell_labels": "coco"}, "one of \\['none', 'minigrid'\\]"),
    ({"vision": "patch", "vision_stem": "deep"}, "model.vision_stem"),
])
def test_config_checks(kw, match):
    with pytest.raises(ConfigError, match=match):
        PolicyConfig(**kw)


def test_objective_checks():
    torch.manual_seed(0)
    plain = VLAPolicy(PolicyConfig(vision="patch", d_model=32, num_heads=4, d_ff=64), spec(),
                      TextTokenizer.train(TASKS, kind="word"))
    with pytest.raises(ValueError, match="loss.cells > 0 needs model.cell_labels"):
        plain.check_objectives(LossConfig(cells=1.0))
    with pytest.raises(ValueError, match="one camera's"):
        VLAPolicy(PolicyConfig(vision="patch", cell_labels="minigrid", d_model=32, num_heads=4, d_ff=64),
                  spec((2, 16, 16, 3)), TextTokenizer.train(TASKS, kind="word"))
    bt = batch()
    del bt["cell_labels"]
    with pytest.raises(ValueError, match="expected the batch to carry 'cell_labels'"):
        make()(bt, LossConfig(cells=1.0))


@pytest.fixture(scope="module")
def putnext_rgb(tmp_path_factory):
    from vlafoundry.data import generate_dataset

    root = tmp_path_factory.mktemp("putnext_rgb") / "ds"
    generate_dataset("babyai/PutNextLocal", 12, root, workers=1, seed=0, image="rgb", progress=False)
    return root


def test_training_on_real_frames_learns_the_cells(putnext_rgb, tmp_path):
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import Trainer

    args = ["--model.d_model", "32", "--model.d_ff", "64", "--model.num_heads", "2", "--model.num_layers", "1",
            "--model.text_layers", "1", "--model.embed_dim", "16", "--model.cell_labels", "minigrid",
            "--model.vision_stem", "mlp", "--loss.cells", "1.0", "--train.batch_size", "32", "--train.steps", "30",
            "--train.lr", "3e-3", "--train.warmup_steps", "2", "--train.log_every", "2", "--train.eval_every", "10",
            "--train.checkpoint_every", "30", "--train.progress", "false", "--train.threads", "1",
            "--data.val_fraction", "0.2"]
    cfg = load_config("babyai-putnextlocal-rgb", args)
    Trainer(cfg, tmp_path / "run", dataset_root=putnext_rgb).fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    val = [r for r in recs if r["split"] == "val"]
    assert train[-1]["cells"] < 0.5 * train[0]["cells"]
    assert val[-1]["cells_acc"] > 0.5 and "bc" in val[-1]


def test_training_refuses_cells_without_a_labeller(tmp_path):
    from vlafoundry.data import generate_dataset
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import Trainer

    root = tmp_path / "sym"
    generate_dataset("babyai/GoToLocal", 4, root, workers=1, seed=0, progress=False)
    cfg = load_config("babyai-gotolocal", ["--model.vision", "patch", "--model.patch_size", "1",
                                           "--model.cell_labels", "minigrid", "--loss.cells", "1.0",
                                           "--train.progress", "false", "--data.val_fraction", "0"])
    with pytest.raises(ConfigError, match="needs egocentric RGB frames"):
        Trainer(cfg, tmp_path / "run", dataset_root=root)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_cell_tokens_embed_the_predicted_labels(mode):
    p = make(cell_tokens=mode).eval()
    bt = batch()
    b = p.prepare(bt)
    enc = p.encode(b)
    patch = enc["extras"]["vision_tokens"]  # (B, 1+N, D)
    logits = p.cell_head(patch[:, 1:])
    torch.testing.assert_close(enc["extras"]["cell_logits"], logits)
    parts = logits.split(list(CELL_LABEL_CLASSES["minigrid"]), dim=-1)
    emb = sum(torch.softmax(x, -1) @ t for x, t in zip(parts, p.cell_embed))  # (B, N, D)
    pos = p.vision_encoder.positions(16, 16, emb.device, emb.dtype)  # (1, 1+N, D)
    want = emb + (pos[:, 1:] if mode == "replace" else patch[:, 1:])
    got = enc["vision"] - p.temporal_pos[-1]  # history 1: one frame's tokens plus its temporal position
    torch.testing.assert_close(got[:, 1:], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[:, 0], patch[:, 0], rtol=1e-5, atol=1e-6)  # CLS unchanged
    p.train()
    loss, _ = p(bt, LossConfig(bc=1.0, cells=1.0))
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in p.cell_embed)
    with pytest.raises(ConfigError, match="model.cell_tokens"):
        PolicyConfig(vision="patch", cell_tokens=mode)
