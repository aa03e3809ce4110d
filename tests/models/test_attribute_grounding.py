"""model.grounding=attributes: configuration checks, what it adds to the cell tokens, and training through it."""

import pytest
import torch

from tests.models.test_policy import babyai_batch, babyai_spec, make
from vlafoundry.models import PolicyConfig


def test_grounding_needs_the_symbolic_grid_and_language():
    with pytest.raises(ValueError, match="model.grounding.*'none' unless model.vision is 'grid'.*got model.vision='patch'"):
        PolicyConfig(vision="patch", grounding="attributes")
    with pytest.raises(ValueError, match="model.grounding.*model.language='none'"):
        PolicyConfig(language="none", grounding="attributes")
    with pytest.raises(ValueError, match=r"model.grounding: expected one of \['none', 'attributes'\], got 'cells'"):
        PolicyConfig(grounding="cells")
    with pytest.raises(ValueError, match=r"model.grounding_readout: expected one of \['sigmoid', 'softmax'\]"):
        PolicyConfig(grounding="attributes", grounding_readout="max")


def test_cells_get_the_match_of_their_own_attributes_and_absent_instructions_add_nothing():
    p = make(babyai_spec(), fusion="film", vision_layers=0, grounding="attributes").eval()
    b = p.prepare(babyai_batch(b=4))
    enc = p.encode(b)
    g = enc["extras"]["grounding"]  # (B, 49, D)
    assert g.shape == (4, 49, 32)
    # the same grid with another instruction: other features; with the instruction absent: none
    b2 = dict(b, instruction=["go to the red ball"] * 4)
    assert not torch.allclose(p.encode(b2)["extras"]["grounding"], g)
    b3 = dict(b, instruction_present=torch.zeros(4, dtype=torch.bool))
    assert p.encode(b3)["extras"]["grounding"].abs().max() == 0
    # a cell's features depend on its object and colour only: two cells alike in both get the same features
    grid = b["image"][:, 0]  # (B, 7, 7, 3)
    grid[:, 0, 0] = grid[:, 3, 4] = torch.tensor([6, 0, 0])
    enc = p.encode(dict(b, image=grid.unsqueeze(1)))
    torch.testing.assert_close(enc["extras"]["grounding"][:, 0], enc["extras"]["grounding"][:, 3 * 7 + 4])


def test_the_pooled_observation_does_not_read_the_instruction_through_the_grounding():
    """Contrastive alignment pairs the pooled observation with the instruction; the grounding features carry the
    instruction, so the observation side must leave them out or alignment is solved by copying."""
    p = make(babyai_spec(), fusion="film", vision_layers=0, grounding="attributes").eval()
    b = p.prepare(babyai_batch(b=4))
    with torch.no_grad():
        a = p.pooled_observation(p.encode(b))
        c = p.pooled_observation(p.encode(dict(b, instruction=["go to the grey key"] * 4)))
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("fusion", "readout"), [("film", "sigmoid"), ("cross_attention", "sigmoid"),
                                                  ("film", "softmax")])
def test_every_parameter_learns_with_the_grounding(fusion, readout):
    p = make(babyai_spec(), fusion=fusion, vision_layers=1, grounding="attributes", grounding_readout=readout)
    loss, _ = p(babyai_batch(b=8))
    loss.backward()
    assert p.grounding is not None
    missing = [n for n, q in p.named_parameters()
               if q.requires_grad and n.startswith("grounding.") and (q.grad is None or q.grad.abs().sum() == 0)]
    assert not missing, missing


def test_grounding_dropout_hides_the_instruction_from_the_fusion_only_in_training():
    with pytest.raises(ValueError, match="model.grounding_dropout.*0 unless model.grounding is on"):
        PolicyConfig(grounding_dropout=0.5)
    with pytest.raises(ValueError, match=r"model.grounding_dropout: expected a probability in \[0, 1\], got 1.5"):
        PolicyConfig(grounding="attributes", grounding_dropout=1.5)
    p = make(babyai_spec(), fusion="film", vision_layers=0, grounding="attributes", grounding_dropout=0.5)
    torch.manual_seed(0)
    b = p.prepare(babyai_batch(b=64))
    enc = p.encode(b)
    kept = enc["fusion_lang_mask"].any(1)
    assert 0.3 < kept.float().mean() < 0.7  # about half the rows lose the instruction, for the fusion only
    assert enc["lang_mask"].any(1).all() and enc["extras"]["grounding"].abs().amax((1, 2)).gt(0).all()
    torch.testing.assert_close(p.fuse(enc), p.fusion(enc["vision"], enc["lang"], enc["vision_mask"],
                                                     enc["fusion_lang_mask"], enc["state"], enc["state_mask"]))
    p.eval()
    assert "fusion_lang_mask" not in p.encode(b)


def test_grounding_dropout_one_keeps_the_instruction_from_the_fusion_when_acting_too():
    p = make(babyai_spec(), fusion="film", vision_layers=0, grounding="attributes", grounding_dropout=1.0).eval()
    b = p.prepare(babyai_batch(b=8))
    enc = p.encode(b)
    assert not enc["fusion_lang_mask"].any() and enc["lang_mask"].any(1).all()
    # the fused features still depend on the instruction, through the matched cells only
    other = p.encode(dict(b, instruction=["go to the grey key"] * 8))
    assert not torch.allclose(p.fuse(enc), p.fuse(other))
    other["extras"]["grounding"] = enc["extras"]["grounding"]
    other["vision"] = other["vision"] - p.encode(dict(b, instruction=["go to the grey key"] * 8))["extras"][
        "grounding"] + enc["extras"]["grounding"]
    torch.testing.assert_close(p.fuse(enc), p.fuse(other), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- loss.grounding: the matching trained directly
def _brute_force_grounding_loss(b, scores):
    """Per cell and attribute, BCE of sigmoid(score) against "the instruction names this value", by loops."""
    from vlafoundry.nn.vision import (
        GRID_COLOR_NAMES,
        GRID_COLOURED_OBJECTS,
        GRID_OBJECT_NAMES,
    )
    terms = []
    grid = b["image"][:, 0].reshape(len(b["instruction"]), -1, 3)  # (B, 49, 3)
    for i, text in enumerate(b["instruction"]):
        words = text.lower().split()
        if not bool(b["instruction_present"][i]):
            continue
        for c in range(grid.shape[1]):
            o, col = int(grid[i, c, 0]), int(grid[i, c, 1])
            y = float(any(w in words for w in GRID_OBJECT_NAMES[o]))
            terms.append(torch.nn.functional.binary_cross_entropy_with_logits(scores[i, c, 0], torch.tensor(y)))
            if GRID_OBJECT_NAMES[o][0] in GRID_COLOURED_OBJECTS:
                y = float(any(w in words for w in GRID_COLOR_NAMES[col]))
                terms.append(torch.nn.functional.binary_cross_entropy_with_logits(scores[i, c, 1], torch.tensor(y)))
    return torch.stack(terms).mean()


def test_grounding_loss_matches_a_brute_force_count_over_cells():
    from vlafoundry.models.objectives import LossConfig
    p = make(babyai_spec(), fusion="film", vision_layers=0, grounding="attributes")
    b = p.prepare(babyai_batch(b=6))
    b["instruction"] = ["go to the red ball", "go to the grey key", "open the Blue door", "pick up a box",
                        "go to the gray key", "put the purple ball next to the yellow box"]
    b["instruction_present"] = torch.tensor([True, True, True, True, True, False])
    enc = p.encode(b)
    expected = _brute_force_grounding_loss(b, enc["extras"]["grounding_scores"])
    torch.testing.assert_close(p.grounding_loss(b, enc), expected, atol=1e-6, rtol=1e-6)
    # through forward: the loss and its metric, gradients into the matching and the attribute tables
    loss, m = p(babyai_batch(b=6), LossConfig(bc=0.0, grounding=1.0))
    assert "grounding" in m and torch.isfinite(loss)
    loss.backward()
    for name in ("grounding.query.weight", "grounding.keys.0.weight", "grounding.keys.1.weight",
                 "vision_encoder.object_embed.weight", "vision_encoder.color_embed.weight"):
        assert p.get_parameter(name).grad.abs().sum() > 0, name


def test_grounding_loss_needs_the_grounding():
    from vlafoundry.models.objectives import LossConfig
    p = make(babyai_spec(), fusion="film", vision_layers=0)
    with pytest.raises(ValueError, match="loss.grounding > 0 needs model.grounding=attributes.*got model.grounding='none'"):
        p.check_objectives(LossConfig(grounding=1.0))
    with pytest.raises(ValueError, match=r"loss.grounding: expected a weight >= 0, got -1"):
        LossConfig(grounding=-1)


def test_grounding_loss_teaches_pairs_it_never_saw():
    """Trained on every colour-object pair but three, the supervised matching finds a held-out pair's cell."""
    from vlafoundry.models.objectives import LossConfig
    objects, colours = {"key": 5, "ball": 6, "box": 7}, {"red": 0, "green": 1, "blue": 2, "grey": 5}
    held = {("red", "ball"), ("green", "key"), ("grey", "box")}
    pairs = [(c, o) for c in colours for o in objects]

    def batch(seed, want_held=False):
        g = torch.Generator().manual_seed(seed)
        rows = [pq for pq in pairs if (pq in held) == want_held]
        img = torch.zeros(16, 1, 7, 7, 3, dtype=torch.uint8)
        img[..., 0] = 1  # empty floor
        texts, where = [], []
        for i in range(16):
            c, o = rows[int(torch.randint(len(rows), (1,), generator=g))]
            cells = torch.randperm(49, generator=g)[:4]
            # the named object, one with its colour, one of its type, and another one
            others = [(c, next(x for x in objects if x != o)), (next(x for x in colours if x != c), o),
                      ([x for x in colours if x != c][1], [x for x in objects if x != o][1])]
            for cell, (cc, oo) in zip(cells.tolist(), [(c, o), *others]):
                img[i, 0, cell // 7, cell % 7] = torch.tensor([objects[oo], colours[cc], 0])
            texts.append(f"go to the {c} {o}")
            where.append(int(cells[0]))
        return {"image": img, "state": torch.zeros(16, 1, 4), "obs_mask": torch.ones(16, 1, dtype=torch.bool),
                "instruction": texts, "action": torch.zeros(16, 1, dtype=torch.long),
                "action_mask": torch.ones(16, 1, dtype=torch.bool)}, torch.tensor(where)

    p = make(babyai_spec(), fusion="film", vision_layers=0, grounding="attributes")
    opt = torch.optim.AdamW(p.parameters(), lr=3e-3)
    for step in range(150):
        loss, _ = p(batch(step)[0], LossConfig(bc=0.0, grounding=1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    p.eval()
    hits = []
    for seed in range(1000, 1004):
        bt, where = batch(seed, want_held=True)
        with torch.no_grad():
            s = p.encode(p.prepare(bt))["extras"]["grounding_scores"]  # (B, 49, 2)
        both = torch.sigmoid(s).prod(-1)  # (B, 49)
        hits.append((both.argmax(1) == where).float())
    assert torch.cat(hits).mean() > 0.95
