"""Instruction snapping (``model.instruction_snap``): a new phrasing replaced by the nearest training instruction
in a frozen sentence encoder's space, only when acting, only for pretrained language."""

from __future__ import annotations

import pytest
import torch

from vlafoundry.config import ConfigError
from vlafoundry.models import PolicyConfig, PolicySpec, VLAPolicy
from vlafoundry.models.grounding import InstructionSnap


class FakeEncoder:
    """Sentence embeddings from a fixed table (unit vectors), counting calls."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table, self.calls = table, 0

    def sentence_embeddings(self, texts):
        self.calls += 1
        v = torch.tensor([self.table[t] for t in texts], dtype=torch.float32)
        return torch.nn.functional.normalize(v, dim=-1)


def test_snap_picks_the_highest_cosine_and_keeps_training_instructions():
    enc = FakeEncoder({"open the drawer": [1, 0, 0], "close the drawer": [0, 1, 0], "press the button": [0, 0, 1],
                       "pull the drawer out": [0.9, 0.2, 0.1], "shut it": [0.1, 0.8, 0.7], "push": [0.1, 0.2, 0.9]})
    snap = InstructionSnap(["open the drawer", "close the drawer", "press the button", "open the drawer"], enc)
    assert snap.known == ["open the drawer", "close the drawer", "press the button"]  # distinct, in order
    out = snap(["close the drawer", "pull the drawer out", "shut it", "push", "pull the drawer out"])
    assert out == ["close the drawer", "open the drawer", "close the drawer", "press the button", "open the drawer"]
    # brute force: cosine of "shut it" with each known instruction
    v = torch.nn.functional.normalize(torch.tensor([0.1, 0.8, 0.7]), dim=0)
    assert [s.given for s in snap.last] == ["pull the drawer out", "shut it", "push", "pull the drawer out"]
    assert snap.last[1].similarity == pytest.approx(float(v[1]), abs=1e-6)
    calls = enc.calls
    assert snap(["open the drawer"]) == ["open the drawer"] and snap.last == [] and enc.calls == calls  # no encoding


def test_snap_needs_training_instructions_and_config_needs_pretrained_language():
    with pytest.raises(ValueError, match="expected the training instructions in the policy spec"):
        InstructionSnap([], FakeEncoder({}))
    with pytest.raises(ConfigError, match="model.instruction_snap: expected false unless model.language is 'pretrained'"):
        PolicyConfig(vision="none", language="scratch", instruction_snap=True)


def test_policy_snaps_new_phrasings_with_minilm_only_when_acting():
    pytest.importorskip("transformers")
    known = ["open the drawer", "close the drawer", "press the button from the top"]
    spec = PolicySpec(env="metaworld/mt10", action_type="continuous", action_dim=2, action_low=[-1.0, -1.0],
                      action_high=[1.0, 1.0], state_dim=2, state_mean=[0.0, 0.0], state_std=[1.0, 1.0],
                      instructions=known)
    cfg = PolicyConfig(vision="none", language="pretrained", fusion="early", head="continuous", d_model=32,
                       num_heads=4, d_ff=64, num_layers=1, instruction_snap=True)
    policy = VLAPolicy(cfg, spec).eval()
    obs = {"state": torch.zeros(3, 2).numpy(), "instruction": ["could you open that drawer please",
                                                               "shut the drawer", "press the button from the top"]}
    action = policy.select_action(obs)
    assert action.shape == (3, 2)
    assert [(s.given, s.used) for s in policy.instruction_snap.last] == [
        ("could you open that drawer please", "open the drawer"), ("shut the drawer", "close the drawer")]
    snapped = policy.encode_language(["could you open that drawer please"])[0]
    exact = policy.encode_language(["open the drawer"])[0]
    torch.testing.assert_close(snapped, exact)
    policy.train()  # training sees the data's own instructions: nothing is replaced
    feats = policy.encode_language(["could you open that drawer please"])[0]
    assert feats.shape[1] != exact.shape[1] or not torch.allclose(feats, exact)
