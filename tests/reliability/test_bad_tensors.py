"""Wrong tensors into layers and policies raise ValueError naming the argument and what was expected.

A fault matrix: every (layer, input) pair below receives each tensor fault (rank, width, integer dtype, float64
dtype, wrong device, NaN, inf) and each mask fault (shape, dtype, device). Device faults use ``meta`` tensors, so
no GPU is needed. Non-finite values are checked when ``vlafoundry.nn.set_check_finite(True)`` is on (the
``train.check_finite`` option); policies check their raw inputs always. Last, ``train.check_finite`` stops a
training run with a NonFiniteError naming the step and the offending tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from vlafoundry.models import PolicyConfig, PolicySpec, VLAPolicy
from vlafoundry.nn import (
    CrossModalAttention,
    EarlyFusion,
    FiLMFusion,
    LateFusion,
    MultiHeadAttention,
    MultimodalEncoder,
    MultimodalMixtureOfExperts,
    TextTokenizer,
    TransformerEncoderBlock,
    VisionLanguageFusion,
    check_finite,
)
from vlafoundry.train.trainer import NonFiniteError, Trainer

D, H, B = 16, 4, 2
LENGTHS = {"a": 3, "b": 5, "c": 2}  # sequence lengths of the first, second and third input


@dataclass
class Case:
    """A layer, its call, its inputs (name -> (B, L, D) tensor or mask), and the (input, mask) pairs to corrupt."""

    make: Callable[[], torch.nn.Module]
    call: Callable[[torch.nn.Module, dict], object]
    inputs: Callable[[], dict[str, torch.Tensor]]
    targets: list[tuple[str, str | None]]


def _seqs(*names: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, length in zip(names, LENGTHS.values()):
        out[name] = torch.randn(B, length, D, generator=g)
    return out


def _with_masks(pairs: list[tuple[str, str]]) -> Callable[[], dict[str, torch.Tensor]]:
    def make() -> dict[str, torch.Tensor]:
        x = _seqs(*[p[0] for p in pairs])
        for name, mask in pairs:
            x[mask] = torch.ones(x[name].shape[:2], dtype=torch.bool)
        return x

    return make


FUSION_PAIRS = [("visual_features", "visual_mask"), ("language_features", "language_mask"),
                ("extra_tokens", "extra_mask")]


def _fusion_call(m, x):
    return m(x["visual_features"], x["language_features"], x["visual_mask"], x["language_mask"],
             extra_tokens=x["extra_tokens"], extra_mask=x["extra_mask"])


CASES: dict[str, Case] = {
    "MultiHeadAttention": Case(
        lambda: MultiHeadAttention(D, H, dropout=0.0),
        lambda m, x: m(x["query"], x["key"], x["value"], key_padding_mask=x["key_padding_mask"]),
        lambda: {**_seqs("query", "key"), "value": _seqs("x", "value")["value"],
                 "key_padding_mask": torch.ones(B, LENGTHS["b"], dtype=torch.bool)},
        [("query", None), ("key", "key_padding_mask"), ("value", None)],
    ),
    "TransformerEncoderBlock": Case(
        lambda: TransformerEncoderBlock(D, H, 2 * D, dropout=0.0), lambda m, x: m(x["x"], x["mask"]),
        _with_masks([("x", "mask")]), [("x", "mask")],
    ),
    "MultimodalEncoder": Case(
        lambda: MultimodalEncoder(D, 1, H, 2 * D, dropout=0.0),
        lambda m, x: m(x["visual_input"], x["lang_input"], x["visual_mask"], x["lang_mask"]),
        _with_masks([("visual_input", "visual_mask"), ("lang_input", "lang_mask")]),
        [("visual_input", "visual_mask"), ("lang_input", "lang_mask")],
    ),
    "CrossModalAttention": Case(
        lambda: CrossModalAttention(D, H, dropout=0.0),
        lambda m, x: m(x["vision_features"], x["lang_features"], x["vision_mask"], x["lang_mask"]),
        _with_masks([("vision_features", "vision_mask"), ("lang_features", "lang_mask")]),
        [("vision_features", "vision_mask"), ("lang_features", "lang_mask")],
    ),
    "EarlyFusion": Case(lambda: EarlyFusion(D, num_layers=1, num_heads=H, dropout=0.0), _fusion_call,
                        _with_masks(FUSION_PAIRS), FUSION_PAIRS),
    "LateFusion": Case(lambda: LateFusion(D, num_layers=1, num_heads=H, dropout=0.0), _fusion_call,
                       _with_masks(FUSION_PAIRS), FUSION_PAIRS),
    "VisionLanguageFusion": Case(lambda: VisionLanguageFusion(D, D, D, num_layers=1, num_heads=H, dropout=0.0),
                                 _fusion_call, _with_masks(FUSION_PAIRS), FUSION_PAIRS),
    "FiLMFusion": Case(lambda: FiLMFusion(D, num_layers=1, dropout=0.0), _fusion_call, _with_masks(FUSION_PAIRS),
                       FUSION_PAIRS),
    "MultimodalMixtureOfExperts": Case(
        lambda: MultimodalMixtureOfExperts(4, D, top_k=2), lambda m, x: m(x["x"], x["mask"]),
        _with_masks([("x", "mask")]), [("x", "mask")],
    ),
}


def _nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[0, 0, 0] = float("nan")
    return x


def _inf(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[-1, -1, -1] = float("-inf")
    return x


# fault -> (transform, regex the message must match after "<name>: ")
TENSOR_FAULTS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "rank": (lambda x: x[None], r"expected a tensor of rank (3|2 or 3), got rank 4"),
    "width": (lambda x: torch.randn(*x.shape[:-1], D + 1), rf"expected last dimension {D}, got shape"),
    "int-dtype": (lambda x: x.long(), r"expected a floating-point tensor, got dtype torch.int64"),
    "float64": (lambda x: x.double(), r"expected (dtype torch.float32|one dtype).*float64"),
    "device": (lambda x: torch.empty(x.shape, device="meta"), r"expected a tensor on (device )?cpu.*meta"),
    "nan": (_nan, r"expected finite values, found 1 NaN and 0 infinite"),
    "inf": (_inf, r"expected finite values, found 0 NaN and 1 infinite"),
}
MASK_FAULTS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "mask-shape": (lambda m: torch.ones(m.shape[0], m.shape[1] + 1, dtype=torch.bool), r"expected shape \("),
    "mask-dtype": (lambda m: m.float(), r"expected dtype torch.bool"),
    "mask-device": (lambda m: torch.ones(m.shape, dtype=torch.bool, device="meta"), r"one device.*meta"),
}

MATRIX = [(layer, name, mask, fault) for layer, case in CASES.items() for name, mask in case.targets
          for fault in TENSOR_FAULTS]
MASK_MATRIX = [(layer, mask, fault) for layer, case in CASES.items() for _, mask in case.targets if mask
               for fault in MASK_FAULTS]


@pytest.mark.parametrize("layer", list(CASES))
def test_clean_inputs_work(layer):
    case = CASES[layer]
    torch.manual_seed(0)
    with check_finite(True):
        out = case.call(case.make(), case.inputs())
    outs = out if isinstance(out, tuple) else (out,)
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("layer,name,mask,fault", MATRIX, ids=[f"{a}-{b}-{d}" for a, b, _, d in MATRIX])
def test_bad_tensor_raises_value_error(layer, name, mask, fault):
    case = CASES[layer]
    torch.manual_seed(0)
    module = case.make()
    x = case.inputs()
    transform, expected = TENSOR_FAULTS[fault]
    x[name] = transform(x[name])
    with check_finite(True), pytest.raises(ValueError) as info:
        case.call(module, x)
    msg = str(info.value)
    import re

    assert name in msg.split(":")[0] and re.search(expected, msg), msg


@pytest.mark.parametrize("layer,mask,fault", MASK_MATRIX, ids=[f"{a}-{b}-{c}" for a, b, c in MASK_MATRIX])
def test_bad_mask_raises_value_error(layer, mask, fault):
    case = CASES[layer]
    torch.manual_seed(0)
    x = case.inputs()
    transform, expected = MASK_FAULTS[fault]
    x[mask] = transform(x[mask])
    with pytest.raises(ValueError) as info:
        case.call(case.make(), x)
    msg = str(info.value)
    import re

    assert mask in msg and re.search(expected, msg), msg


def test_float_inputs_under_autocast_are_allowed():
    """The dtype check stands aside inside torch.autocast, where mixed float dtypes are expected."""
    block = TransformerEncoderBlock(D, H, 2 * D, dropout=0.0)
    x = torch.randn(B, 3, D, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="expected dtype torch.float32"):
        block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(x).shape == (B, 3, D)


# ------------------------------------------------------------------------------------------ policies
INSTR = ["go to the red ball", "go to the blue key", "go to a box"]


def _policy(**kw) -> VLAPolicy:
    torch.manual_seed(0)
    spec = PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4,
                      image_shape=[7, 7, 3], state_mean=[0.25] * 4, state_std=[0.43] * 4)
    cfg = PolicyConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, vision_layers=0, text_layers=0, **kw)
    return VLAPolicy(cfg, spec, TextTokenizer.train(INSTR, kind="word")).eval()


def _obs(n: int = 3) -> dict:
    g = np.random.default_rng(0)
    image = np.stack([g.integers(0, 11, (n, 7, 7)), g.integers(0, 6, (n, 7, 7)), g.integers(0, 3, (n, 7, 7))], -1)
    return {"image": image.astype(np.uint8), "state": np.eye(4, dtype=np.float32)[g.integers(0, 4, n)],
            "instruction": [INSTR[i % 3] for i in range(n)]}


def _set(key, value):
    def apply(obs):
        obs[key] = value(obs) if callable(value) else value
        return obs

    return apply


def _drop(key):
    def apply(obs):
        del obs[key]
        return obs

    return apply


def _state_with(v):
    def make(obs):
        s = obs["state"].copy()
        s[1, 2] = v
        return s

    return make


POLICY_FAULTS = {
    "image-frame-shape": (_set("image", lambda o: o["image"][:, :5]), r"image: expected frames of shape \(7, 7, 3\)"),
    "image-float": (_set("image", lambda o: o["image"].astype(np.float32)), r"image: expected an integer tensor"),
    "image-rows": (_set("image", lambda o: o["image"][:2]), r"image: expected 3 rows"),
    "image-values": (_set("image", lambda o: o["image"] + 50), r"grid: object index out of range"),
    "image-missing": (_drop("image"), r"observation: expected key 'image'"),
    "state-width": (_set("state", np.zeros((3, 5), np.float32)), r"state: expected last dimension 4"),
    "state-rows": (_set("state", np.zeros((4, 4), np.float32)), r"state: expected 3 rows"),
    "state-nan": (_set("state", _state_with(np.nan)), r"state: expected finite values, found 1 NaN"),
    "state-inf": (_set("state", _state_with(np.inf)), r"state: expected finite values, found 0 NaN and 1 infinite"),
    "state-missing": (_drop("state"), r"observation: expected key 'state'"),
    "instruction-str": (_set("instruction", "go to the red ball"), r"instruction: expected a list of N strings"),
    "instruction-ints": (_set("instruction", [1, 2, 3]), r"instruction: expected a list of N strings"),
    "present-length": (_set("image_present", np.ones(2, bool)), r"image_present: expected shape \(3,\)"),
}


@pytest.mark.parametrize("fault", list(POLICY_FAULTS))
def test_policy_select_action_bad_observation(fault):
    policy = _policy()
    assert policy.select_action(_obs()).shape == (3,)  # the clean observation works
    edit, expected = POLICY_FAULTS[fault]
    policy.reset()
    with pytest.raises(ValueError, match=expected):
        policy.select_action(edit(_obs()))


@pytest.mark.parametrize("fault", ["image-rows", "state-rows", "state-nan", "present-length"])
def test_policy_training_forward_bad_batch(fault):
    policy = _policy().train()
    obs = POLICY_FAULTS[fault][0](_obs())
    batch = {**obs, "action": torch.zeros(3, 1, dtype=torch.long), "action_mask": torch.ones(3, 1, dtype=torch.bool)}
    with pytest.raises(ValueError, match=POLICY_FAULTS[fault][1]):
        policy(batch)


# ------------------------------------------------------------------------------------------ train.check_finite
@pytest.fixture(scope="module")
def finite_cfg(tiny_cfg):
    return lambda: tiny_cfg("--train.steps", "12", "--train.check_finite", "true")


@pytest.mark.parametrize("param,first_report", [
    ("action_head.net.2.weight", r"loss is nan \(non-finite terms: \['bc', 'loss'\]\)"),
    ("vision_encoder.object_embed.weight", r"visual_features: expected finite values"),
    ("state_proj.0.weight", r"extra_tokens: expected finite values"),
])
def test_check_finite_stops_with_step_and_parameter(param, first_report, finite_cfg, rel_dataset, tmp_path):
    tr = Trainer(finite_cfg(), tmp_path / "run", dataset_root=rel_dataset)
    tr.fit(stop_after=4)
    with torch.no_grad():
        dict(tr.policy.named_parameters())[param].view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match=rf"^step 4: {first_report}.*; non-finite parameters: \['{param}'\]$"):
        tr.fit()
    assert tr.step == 4  # stopped before the optimiser applied anything from the bad step


def test_check_finite_names_non_finite_gradient(finite_cfg, rel_dataset, tmp_path):
    tr = Trainer(finite_cfg(), tmp_path / "run", dataset_root=rel_dataset)
    tr.fit(stop_after=3)
    tr.policy.fusion.fc2[0].weight.register_hook(lambda g: g * float("inf"))  # inf/NaN gradient, finite loss
    with pytest.raises(NonFiniteError, match=r"^step 3: gradient of 'fusion\.fc2\.0\.weight' has non-finite"):
        tr.fit()


def test_check_finite_names_non_finite_input_data(finite_cfg, rel_dataset, tmp_path, monkeypatch):
    tr = Trainer(finite_cfg(), tmp_path / "run", dataset_root=rel_dataset)
    real = tr.train_ds.__getitems__

    def poisoned(idx):
        batch = real(idx)
        if tr.step == 2:
            batch["state"][0, 0, 0] = float("nan")
        return batch

    monkeypatch.setattr(tr.train_ds, "__getitems__", poisoned)
    with pytest.raises(NonFiniteError, match=r"^step 2: state: expected finite values, found 1 NaN"):
        tr.fit()


def test_without_check_finite_a_nan_parameter_is_not_reported(tiny_cfg, rel_dataset, tmp_path):
    """The check is opt-in (it costs a reduction per tensor); off, training carries on with NaN losses."""
    tr = Trainer(tiny_cfg("--train.steps", "6"), tmp_path / "run", dataset_root=rel_dataset)
    tr.fit(stop_after=2)
    with torch.no_grad():
        tr.policy.action_head.net[2].weight.fill_(float("nan"))
    summary = tr.fit()
    assert summary["step"] == 6 and not np.isfinite(summary["last"]["loss"])
