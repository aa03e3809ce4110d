"""The trainer applies data.instruction_variants to training batches; a scratch tokenizer learns the variants' words."""

from __future__ import annotations

import json

import pytest


def test_trainer_rewrites_batches_and_the_scratch_tokenizer_knows_the_variants(gotolocal_root, tiny_cfg, tmp_path):
    from vlafoundry.config import ConfigError
    from vlafoundry.train.trainer import Trainer

    f = tmp_path / "v.json"
    f.write_text(json.dumps({"go to {article} {color} {object}": ["zebra toward the {color} {object}"]}))
    ov = ("--train.steps", "2", "--data.instruction_variants", str(f), "--data.instruction_variant_p", "1.0")
    tr = Trainer(tiny_cfg(*ov), tmp_path / "run", dataset_root=gotolocal_root)
    seen: list[str] = []
    real = tr.policy.forward

    def spy(batch, loss_cfg=None):
        seen.extend(batch["instruction"])
        return real(batch, loss_cfg)

    tr.policy.forward = spy
    tr.fit()
    assert seen and all(s.startswith("zebra toward the ") for s in seen if "go to" not in s)
    assert sum(s.startswith("zebra") for s in seen) > len(seen) // 2
    ids, _ = tr.policy.tokenizer.encode(["zebra toward the red ball"])  # (1, L)
    assert tr.policy.tokenizer.unk_id not in ids[0].tolist()  # the variants' words are in the vocabulary
    assert any(t.startswith("zebra") for t in tr.policy.spec.instructions)
    with pytest.raises(ConfigError, match="data.instruction_variants: expected a shipped name"):
        Trainer(tiny_cfg("--data.instruction_variants", "nope"), tmp_path / "bad", dataset_root=gotolocal_root)
    with pytest.raises(ConfigError, match=r"data.instruction_variant_p: expected a probability in \[0, 1\]"):
        tiny_cfg("--data.instruction_variant_p", "2")
