"""Offline evaluation on a held-out split: action accuracy, retrieval recall@k, ITM, modality balance, bias,
offline robustness rows, report sections and the ``vlafoundry eval --offline`` wiring, on real BabyAI demos."""

from __future__ import annotations

import argparse
import copy
import json
import math
import re

import numpy as np
import pytest
import torch

from vlafoundry.data import DemoDataset, generate_dataset
from vlafoundry.eval.offline import (
    collect_offline_outputs,
    corrupt_batch,
    modality_balance,
    offline_bias,
    offline_metrics,
    offline_robustness_fn,
)
from vlafoundry.eval.report import ReportInputs, write_report
from vlafoundry.eval.rollout import ObservationCorruption
from vlafoundry.eval.stats import wilson_interval
from vlafoundry.models import PolicyConfig, VLAPolicy

TINY = PolicyConfig(d_model=32, d_ff=64, num_heads=2, num_layers=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline") / "ds"
    generate_dataset("babyai/GoToLocal", 20, root, workers=1, progress=False)
    train = DemoDataset(root, split="train", val_fraction=0.4, split_seed=0)
    val = DemoDataset(root, split="val", val_fraction=0.4, split_seed=0)
    return root, train, val


@pytest.fixture(scope="module")
def policy(data):
    """A tiny policy trained briefly, so that it uses its inputs (ablations then change its outputs)."""
    _, train, _ = data
    torch.manual_seed(0)
    pol = VLAPolicy.from_dataset(TINY, train)
    opt = torch.optim.Adam(pol.parameters(), lr=3e-3)
    batch = train.__getitems__(list(range(len(train))))
    pol.train()
    for _ in range(40):
        loss, _ = pol(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return pol.eval()


def _all(ds):
    return ds.__getitems__(list(range(len(ds))))


def _brute_recall(q: torch.Tensor, c: torch.Tensor, ids: torch.Tensor, k: int) -> float:
    """Recall@k by explicit loops: query i is a hit when some candidate with its id is among its top k, counting
    every negative with similarity >= the best positive's as ranked ahead of it."""
    q = q.double() / q.double().norm(dim=1, keepdim=True)
    c = c.double() / c.double().norm(dim=1, keepdim=True)
    hits = 0
    for i in range(q.shape[0]):
        sims = [float(q[i] @ c[j]) for j in range(c.shape[0])]
        best = max(s for j, s in enumerate(sims) if ids[j] == ids[i])
        ahead = sum(1 for j, s in enumerate(sims) if ids[j] != ids[i] and s >= best - 1e-9)
        hits += ahead < k
    return hits / q.shape[0]


def test_metrics_keys_ranges_and_accuracy_reference(policy, data):
    _, _, val = data
    m = offline_metrics(policy, val, batch_size=16)
    for k in ("samples", "action_acc", "obs_to_instr_r@1", "obs_to_instr_r@5", "obs_to_instr_r@10", "instr_to_obs_r@1",
              "instr_to_obs_r@5", "instr_to_obs_r@10", "itm_acc", "itm_acc_matched", "itm_acc_negative"):  # fmt: skip
        assert k in m and math.isfinite(m[k]), k
    assert m["samples"] == len(val)
    for d in ("obs_to_instr", "instr_to_obs"):
        assert 0.0 <= m[f"{d}_r@1"] <= m[f"{d}_r@5"] <= m[f"{d}_r@10"] <= 1.0
    for k in ("action_acc", "itm_acc", "itm_acc_matched", "itm_acc_negative"):
        assert 0.0 <= m[k] <= 1.0
    # the reference: the policy's own validation metric on the whole split in one batch
    with torch.no_grad():
        _, ref = policy(_all(val))
    assert m["action_acc"] == pytest.approx(ref["action_acc"], abs=1e-6)
    assert 0.0 < m["action_acc"] < 1.0


def test_recall_against_brute_force_on_the_same_embeddings(policy, data):
    _, _, val = data
    out = collect_offline_outputs(policy, val, batch_size=7, max_samples=40)
    # the collected embeddings are policy.embed's for the same samples, in visiting order
    obs, ins = policy.embed(val.__getitems__(out.indices.tolist()))
    torch.testing.assert_close(out.obs_emb, obs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.instr_emb, ins, atol=1e-5, rtol=1e-5)
    assert len(torch.unique(out.pair_ids)) < len(out.pair_ids)  # several steps share an instruction
    from vlafoundry.eval.offline import metrics_from_outputs

    m = metrics_from_outputs(out)
    for k in (1, 5, 10):
        assert m[f"obs_to_instr_r@{k}"] == pytest.approx(_brute_recall(out.obs_emb, out.instr_emb, out.pair_ids, k))
        assert m[f"instr_to_obs_r@{k}"] == pytest.approx(_brute_recall(out.instr_emb, out.obs_emb, out.pair_ids, k))


def test_deterministic_and_batch_size_invariant(policy, data):
    _, _, val = data
    noisy = ObservationCorruption(image_noise=0.3, instruction_noise=0.3, state_noise=0.5)
    torch.manual_seed(123)
    a = offline_metrics(policy, val, batch_size=16, corruption=noisy)
    torch.manual_seed(456)
    b = offline_metrics(policy, val, batch_size=16, corruption=noisy)
    assert a == b
    assert modality_balance(policy, val, batch_size=16) == modality_balance(policy, val, batch_size=16)
    clean_small, clean_big = offline_metrics(policy, val, batch_size=5), offline_metrics(policy, val, batch_size=999)
    for k in ("action_acc", "obs_to_instr_r@1", "instr_to_obs_r@5"):
        assert clean_small[k] == pytest.approx(clean_big[k], abs=1e-6)
    assert a != clean_big  # the corruption changes something
    assert policy.training is False


def test_balance_aggregates_over_batches_exactly(policy, data):
    _, _, val = data
    small, big = modality_balance(policy, val, batch_size=6), modality_balance(policy, val, batch_size=10_000)
    assert small["metric_full"] == pytest.approx(big["metric_full"], abs=1e-9)
    for m in small["modalities"]:
        assert small["metric_ablated"][m] == pytest.approx(big["metric_ablated"][m], abs=1e-9)
        assert small["loss_ablated"][m] == pytest.approx(big["loss_ablated"][m], rel=1e-5)
        assert small["gradient_norm"][m] == pytest.approx(big["gradient_norm"][m], rel=1e-4)
    for key in ("ablation_share", "loss_ablation_share", "gradient_share", "gradient_x_input_share"):
        assert sum(big[key].values()) == pytest.approx(1.0)


def test_ablation_equals_marking_the_modality_absent(policy, data):
    _, _, val = data
    bal = modality_balance(policy, val)
    assert bal["modalities"] == ["image", "instruction", "state"]
    batch = _all(val)
    with torch.no_grad():
        _, full = policy(batch)
        assert bal["metric_full"] == pytest.approx(full["action_acc"], abs=1e-6)
        for m in bal["modalities"]:
            _, ablated = policy({**batch, f"{m}_present": torch.zeros(len(val), dtype=torch.bool)})
            assert bal["metric_ablated"][m] == pytest.approx(ablated["action_acc"], abs=1e-6), m
            assert bal["loss_ablated"][m] == pytest.approx(ablated["bc"], rel=1e-5), m
    # the gradient norm against autograd through the whole split at once
    b = policy.prepare(batch)
    enc = policy.encode(b)
    leaf = enc["state"].detach().requires_grad_(True)
    loss, _ = policy.bc_loss(policy.features({**enc, "state": leaf}), b, _loss_cfg())
    (g,) = torch.autograd.grad(loss, leaf)
    assert bal["gradient_norm"]["state"] == pytest.approx(float(g.norm()), rel=1e-4)


def _loss_cfg():
    from vlafoundry.train.config import LossConfig

    return LossConfig()


def test_a_modality_the_policy_ignores_gets_zero_share(policy, data):
    _, _, val = data
    trained = modality_balance(policy, val)
    assert trained["gradient_share"]["instruction"] > 0.01  # the trained policy does read the instruction
    deaf = copy.deepcopy(policy)
    with torch.no_grad():  # FiLM conditioning from language becomes the constant identity: language is ignored
        deaf.fusion.film_generator.weight.zero_()
        deaf.fusion.film_generator.bias.zero_()
    bal = modality_balance(deaf, val)
    assert bal["ablation_drop"]["instruction"] == 0.0
    assert bal["ablation_share"]["instruction"] == 0.0
    assert bal["loss_ablation_share"]["instruction"] < 1e-6
    assert bal["gradient_norm"]["instruction"] == 0.0
    assert bal["loss_ablation_share"]["image"] > 0.1 and bal["gradient_share"]["image"] > 0.1
    fn = offline_robustness_fn(deaf, val)
    full, no_instr = fn(ObservationCorruption()), fn(ObservationCorruption(remove=("instruction",)))
    assert no_instr["offline action_acc"] == full["offline action_acc"]
    no_image = offline_robustness_fn(policy, val)(ObservationCorruption(remove=("image",)))
    assert set(no_image) == {"offline action_acc", "offline obs_to_instr_r@1", "offline instr_to_obs_r@1",
                             "offline itm_acc"}  # fmt: skip
    assert no_image["offline action_acc"] != offline_robustness_fn(policy, val)(ObservationCorruption())[
        "offline action_acc"]


def test_corrupt_batch(data):
    _, _, val = data
    batch = val.__getitems__(list(range(8)))
    assert corrupt_batch(batch, ObservationCorruption(), np.random.default_rng(0)) is batch
    out = corrupt_batch(batch, ObservationCorruption(remove=("image", "instruction")), np.random.default_rng(0))
    assert not out["image_present"].any() and not out["instruction_present"].any() and out["state_present"].all()
    assert int(out["image"].abs().sum()) == 0 and out["instruction"] == [""] * 8
    assert batch["image_present"].all() and int(batch["image"].sum()) > 0  # the input batch is untouched
    n1 = corrupt_batch(batch, ObservationCorruption(state_noise=1.0), np.random.default_rng(1))
    n2 = corrupt_batch(batch, ObservationCorruption(state_noise=1.0), np.random.default_rng(1))
    torch.testing.assert_close(n1["state"], n2["state"])
    assert not torch.equal(n1["state"], batch["state"])


def test_offline_bias(policy, data):
    _, _, val = data
    res = offline_bias(policy, val)
    assert res["entries"] == len(val)
    assert set(res["by"]) == {"template", "object", "colour", "task"}
    with torch.no_grad():
        pred = policy.predict_chunk(_all(val))[:, 0]
    target = _all(val)["action"][:, 0]
    assert res["overall"] == pytest.approx(float((pred == target).float().mean()))
    for key, v in res["by"].items():
        assert sum(g["n"] for g in v["groups"]) == len(val)
        accs = {g["group"]: g["accuracy"] for g in v["groups"]}
        assert v["gap"] == pytest.approx(max(accs.values()) - min(accs.values()))
        assert accs[v["worst"]] == min(accs.values()) and accs[v["best"]] == max(accs.values())
        for g in v["groups"]:
            assert (g["ci_low"], g["ci_high"]) == pytest.approx(wilson_interval(g["correct"], g["n"]))
    templates = [g["group"] for g in res["by"]["template"]["groups"]]
    assert all("{object}" in t for t in templates)
    assert len(res["by"]["object"]["groups"]) > 1


def test_bad_arguments(policy, data):
    _, _, val = data
    with pytest.raises(ValueError, match="batch_size"):
        offline_metrics(policy, val, batch_size=0)
    with pytest.raises(ValueError, match="max_samples"):
        modality_balance(policy, val, max_samples=0)


def test_report_sections(policy, data, tmp_path):
    _, _, val = data
    bal, bias = modality_balance(policy, val), offline_bias(policy, val)
    res = {"rows": [{"task": "babyai/GoToLocal", "episodes": 4, "success_rate": 0.5, "ci_low": 0.15, "ci_high": 0.85,
                     "mean_length": 10.0, "mean_return": 0.4}]}  # fmt: skip
    paths = write_report(tmp_path, ReportInputs(eval_result=res, balance=bal, offline_bias=bias,
                                                tables={"Offline metrics": offline_metrics(policy, val)}))  # fmt: skip
    md = paths["markdown"].read_text()
    assert "## Modality balance (held-out split)" in md and "## Held-out accuracy per subgroup (bias)" in md
    assert "obs_to_instr_r@1" in md and "### Held-out accuracy by object" in md
    for png in ("modality_balance.png", "offline_subgroups.png"):
        assert (paths["assets"] / png).stat().st_size > 1000
    assert paths["html"].read_text().count("data:image/png;base64,") == 2


def test_cli_offline(data, tmp_path, capsys):
    """`vlafoundry eval` with offline metrics: eval.json and the report carry them; --offline fails clearly when the
    dataset is missing; the default skips with a note."""
    from vlafoundry.cli.evaluate import register
    from vlafoundry.eval.pipeline import offline_dataset as _offline_dataset
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import run_phase

    root, _, _ = data
    cfg = load_config("babyai-gotolocal", [
        "--model.d_model", "32", "--model.d_ff", "64", "--model.num_heads", "2", "--model.num_layers", "1",
        "--model.embed_dim", "16", "--train.batch_size", "32", "--train.steps", "4", "--train.warmup_steps", "1",
        "--train.checkpoint_every", "4", "--train.eval_every", "4", "--train.log_every", "2",
        "--train.progress", "false", "--train.threads", "1", "--data.val_fraction", "0.4", "--data.path", str(root),
    ])  # fmt: skip
    run = tmp_path / "run"
    run_phase(cfg, run)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())

    def run_eval(*extra: str) -> int:
        args = parser.parse_args(["eval", str(run), "--episodes", "2", "--workers", "0", "--gifs", "0", *extra])
        return args.handler(args)

    capsys.readouterr()
    assert run_eval("--out", str(tmp_path / "e1")) == 0
    terminal = capsys.readouterr().out
    payload = json.loads((tmp_path / "e1" / "eval.json").read_text())
    assert set(payload["offline"]) >= {"metrics", "balance", "bias"}
    assert payload["offline"]["metrics"]["samples"] == len(DemoDataset(root, split="val", val_fraction=0.4))
    md = (tmp_path / "e1" / "report.md").read_text()
    assert "Offline metrics (held-out split" in md and "Modality balance" in md and "ITM accuracy" in md
    # the terminal carries the report's ITM caveat, and shows the figure exactly when the report does
    from vlafoundry.eval.pipeline import itm_verdict

    show, note = itm_verdict(payload["offline"]["metrics"], cfg)
    assert note is not None and note in md and note in terminal
    assert bool(re.search(r"ITM acc \d", terminal)) == show and ("itm_acc_matched" in md) == show
    assert "itm_acc" in payload["offline"]["metrics"]  # eval.json keeps the figure either way
    assert (tmp_path / "e1" / "report_assets" / "modality_balance.png").is_file()
    assert payload["action_selection"] == {"mode": "sample", "sample_temperature": 1.0}  # the preset's

    # inference overrides are recorded with the results; a bad temperature is refused before any rollout
    assert run_eval("--no-offline", "--action-selection", "sample", "--sample-temperature", "0.5",
                    "--out", str(tmp_path / "e2")) == 0  # fmt: skip
    sel = json.loads((tmp_path / "e2" / "eval.json").read_text())["action_selection"]
    assert sel == {"mode": "sample", "sample_temperature": 0.5}
    capsys.readouterr()
    for bad in ("0", "-1", "nan"):
        assert run_eval("--sample-temperature", bad, "--out", str(tmp_path / "e4")) == 2
        assert "--sample-temperature: expected a number > 0, got" in capsys.readouterr().err
    assert not (tmp_path / "e4").exists()

    notes: list[str] = []
    assert _offline_dataset(cfg, False, notes) is None and notes == []  # --no-offline: skipped silently
    moved = root.with_name("moved")
    root.rename(moved)
    try:
        capsys.readouterr()
        assert run_eval("--offline", "--out", str(tmp_path / "e3")) == 2  # fails before any rollout
        assert "--offline: the training dataset is not available locally" in capsys.readouterr().err
        assert _offline_dataset(cfg, None, notes) is None  # default: skipped with a note for the report
        assert len(notes) == 1 and notes[0].startswith("no offline metrics: the training dataset is not available")
    finally:
        moved.rename(root)


def test_one_pass_equals_the_separate_measures(policy, data):
    """offline_evaluation: the outputs and the balance of one pass are those of the separate functions."""
    from vlafoundry.eval.offline import metrics_from_outputs, offline_evaluation

    _, _, val = data
    outputs, bal = offline_evaluation(policy, val, batch_size=16, balance_samples=10)
    ref = collect_offline_outputs(policy, val, batch_size=16)
    np.testing.assert_array_equal(outputs.indices, ref.indices)
    np.testing.assert_array_equal(outputs.entry_correct, ref.entry_correct)
    torch.testing.assert_close(outputs.obs_emb, ref.obs_emb, atol=1e-5, rtol=1e-5)
    got, want = metrics_from_outputs(outputs), metrics_from_outputs(ref)
    for k in ("samples", "action_acc", "obs_to_instr_r@1", "instr_to_obs_r@5"):
        assert got[k] == pytest.approx(want[k], abs=1e-6), k
    sep = modality_balance(policy, val, batch_size=16, max_samples=10)
    assert bal["samples"] == sep["samples"] == 10
    assert bal["metric_full"] == pytest.approx(sep["metric_full"], abs=1e-9)
    for m in sep["modalities"]:
        assert bal["metric_ablated"][m] == pytest.approx(sep["metric_ablated"][m], abs=1e-9)
        assert bal["loss_ablated"][m] == pytest.approx(sep["loss_ablated"][m], rel=1e-5)
        assert bal["gradient_norm"][m] == pytest.approx(sep["gradient_norm"][m], rel=1e-4)
    none, no_bal = offline_evaluation(policy, val, balance_samples=0)
    assert no_bal is None and none is not None
    with pytest.raises(ValueError, match="balance_samples: expected >= 0 or None, got -1"):
        offline_evaluation(policy, val, balance_samples=-1)
