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
