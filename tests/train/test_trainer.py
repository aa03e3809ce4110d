"""The trainer on real generated BabyAI data: loss falls, resume is exact, DDP equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlafoundry.train import checkpoint as ckpt
from vlafoundry.config import ConfigError
from vlafoundry.train.trainer import Trainer, cycle_configs, fit_phase, policy_from_checkpoint


def _weights(run):
    return load_file(str(ckpt.resolve_checkpoint(run) / "model.safetensors"))


def test_training_reduces_loss_and_writes_run(gotolocal_root, tiny_cfg, tmp_path):
    cfg = tiny_cfg("--train.steps", "30", "--train.lr", "3e-3")
    tr = Trainer(cfg, tmp_path / "run", dataset_root=gotolocal_root)
    summary = tr.fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in recs if r["split"] == "train"]
    assert train[-1] < 0.7 * train[0]
    assert any(r["split"] == "val" for r in recs)
    assert summary["step"] == 30
    for f in ("config.yaml", "summary.json"):
        assert (tmp_path / "run" / f).is_file()
    assert list((tmp_path / "run" / "tb").iterdir())
    # the checkpoint restores the same policy (config + tokenizer + weights)
    p, cfg2, _ = policy_from_checkpoint(tmp_path / "run")
    for k, v in tr.policy.state_dict().items():
        assert torch.equal(p.state_dict()[k], v)
    assert cfg2.model == cfg.model


def test_stop_and_resume_equals_uninterrupted(gotolocal_root, tiny_cfg, tmp_path):
    # dropout and modality dropout on: the RNG state must be restored too
    ov = ("--train.steps", "12", "--model.dropout", "0.1", "--model.modality_dropout.image", "0.2",
          "--loss.contrastive", "0.5", "--loss.mlm", "0.5")
    Trainer(tiny_cfg(*ov), tmp_path / "full", dataset_root=gotolocal_root).fit()
    Trainer(tiny_cfg(*ov), tmp_path / "cut", dataset_root=gotolocal_root).fit(stop_after=5)  # checkpoints at 4, 5
    Trainer(tiny_cfg(*ov), tmp_path / "cut", dataset_root=gotolocal_root).fit()  # resumes from step 5
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pretrain_then_train_init_from(gotolocal_root, tiny_cfg, tmp_path):
    cfg = tiny_cfg("--pretrain.steps", "6", "--pretrain.batch_size", "32", "--train.steps", "4",
                   "--pretrain.loss.mrm", "0.5")
    s = Trainer(cfg, tmp_path / "pre", phase="pretrain", dataset_root=gotolocal_root).fit()
    assert s["phase"] == "pretrain" and {"contrastive", "itm", "mlm", "mrm"} <= set(s["last"])
    pre = _weights(tmp_path / "pre")
    tr = Trainer(cfg, tmp_path / "bc", init_from=tmp_path / "pre", dataset_root=gotolocal_root)
    for k, v in tr.policy.state_dict().items():
        assert torch.equal(pre[k], v), k
    tr.fit()


def test_init_from_applies_runtime_model_keys_and_names_the_architecture_it_keeps(gotolocal_root, tiny_cfg, tmp_path,
                                                                                  capsys):
    """--init-from takes the architecture from the checkpoint; training/acting keys such as model.grounding_dropout
    or model.action_selection are the run's own (they used to be replaced by the checkpoint's, silently)."""
    cfg = tiny_cfg("--pretrain.steps", "2", "--pretrain.batch_size", "16")
    Trainer(cfg, tmp_path / "pre", phase="pretrain", dataset_root=gotolocal_root).fit()
    cfg2 = tiny_cfg("--train.steps", "2", "--model.action_selection", "greedy", "--model.d_model", "48")
    tr = Trainer(cfg2, tmp_path / "bc", init_from=tmp_path / "pre", dataset_root=gotolocal_root)
    out = capsys.readouterr().out
    assert "applying model.action_selection: 'sample' -> 'greedy'" in out
    assert "keeping the checkpoint's architecture (model.d_model: 32 -> 48 ignored)" in out
    assert tr.policy.cfg.action_selection == tr.cfg.model.action_selection == "greedy"
    assert tr.cfg.model.d_model == tr.policy.cfg.d_model == 32
    tr.fit()
    assert "action_selection: greedy" in (tmp_path / "bc" / "config.yaml").read_text()


def test_restarts_equal_chained_init_from_runs_and_resume_exactly(gotolocal_root, tiny_cfg, tmp_path, monkeypatch):
    """train.restarts [3, 2]: the computation of three chained `train --init-from` commands, in one call."""
    ov = ("--train.steps", "4", "--train.warmup_steps", "2", "--model.dropout", "0.1")
    cfg = tiny_cfg(*ov, "--train.restarts", "[3, 2]", "--train.restart_warmup_steps", "1")
    summary, tr = fit_phase(cfg, tmp_path / "cycles", dataset_root=gotolocal_root)
    assert [c.train.steps for c in cycle_configs(cfg)] == [4, 3, 2]
    assert [c.train.warmup_steps for c in cycle_configs(cfg)] == [2, 1, 1]
    assert summary["step"] == summary["steps"] == 9 and len(summary["cycles"]) == 3
    assert [c["step"] for c in summary["cycles"]] == [4, 3, 2]
    assert summary["wall_s"] == pytest.approx(sum(c["wall_s"] for c in summary["cycles"]))
    assert json.loads((tmp_path / "cycles" / "cycles.json").read_text()) == summary["cycles"]
    assert (tmp_path / "cycles" / "cycles" / "cycle_1" / "checkpoints").is_dir()
    assert "restarts:\n  - 3\n  - 2" in (tmp_path / "cycles" / "config.yaml").read_text()

    # the same by hand: each cycle a fresh trainer (fresh AdamW, schedule from 0) from the previous weights
    Trainer(tiny_cfg(*ov), tmp_path / "c1", dataset_root=gotolocal_root).fit()
    Trainer(tiny_cfg(*ov, "--train.steps", "3", "--train.warmup_steps", "1"), tmp_path / "c2",
            init_from=tmp_path / "c1", dataset_root=gotolocal_root).fit()
    Trainer(tiny_cfg(*ov, "--train.steps", "2", "--train.warmup_steps", "1"), tmp_path / "c3",
            init_from=tmp_path / "c2", dataset_root=gotolocal_root).fit()
    a, b = _weights(tmp_path / "cycles"), _weights(tmp_path / "c3")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k, v in tr.policy.state_dict().items():
        assert torch.equal(a[k], v), k

    # interrupted one step into the second cycle, then the same call again: ends with the same weights
    real_fit, calls = Trainer.fit, []

    def interrupted(self, stop_after=None):
        calls.append(self.run_dir)
        if len(calls) == 2:
            real_fit(self, stop_after=1)
            raise KeyboardInterrupt
        return real_fit(self, stop_after)

    monkeypatch.setattr(Trainer, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit_phase(cfg, tmp_path / "cut", dataset_root=gotolocal_root)
    monkeypatch.setattr(Trainer, "fit", real_fit)
    assert len(json.loads((tmp_path / "cut" / "cycles.json").read_text())) == 1
    again, _ = fit_phase(cfg, tmp_path / "cut", dataset_root=gotolocal_root)
    assert again["step"] == 9
    c = _weights(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], c[k]), k
    # a rerun of the finished command trains nothing and keeps the record
    rerun, _ = fit_phase(cfg, tmp_path / "cut", dataset_root=gotolocal_root)
    assert rerun == again


def test_restarts_are_validated(tiny_cfg):
    with pytest.raises(ConfigError, match="train.restarts"):
        tiny_cfg("--train.restarts", "[3, 0]")
    with pytest.raises(ConfigError, match="train.restart_warmup_steps"):
        tiny_cfg("--train.restarts", "[3]", "--train.restart_warmup_steps", "-1")


def _run_cli(args, env_extra=None, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("memory", ["none", "gru"])
def test_ddp_two_processes_equal_one(gotolocal_root, tmp_path, tiny_args, memory):
    """Steps (no memory) or whole episodes (memory: the ranks hold different numbers of steps; the BC and
    contrastive losses divide by the mean count over ranks, so DDP still equals one process). The memory case also
    runs a second cosine cycle (train.restarts): the ranks move from cycle to cycle together."""
    common = ["--data", str(gotolocal_root), "--no-resume", *tiny_args, "--train.steps", "4", "--train.batch_size", "16",
              "--loss.contrastive", "1.0", "--train.eval_every", "100", "--train.checkpoint_every", "100",
              "--model.memory", memory, *(["--train.restarts", "[2]"] if memory == "gru" else [])]
    one = _run_cli(["-m", "vlafoundry", "train", "--out", str(tmp_path / "one"), *common])
    assert one.returncode == 0, one.stderr[-3000:]
    # --standalone: torchrun's rendezvous on a free local port (no fixed port to collide with another job)
    two = _run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "vlafoundry", "train", "--out", str(tmp_path / "two"), *common])
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["step"] == (6 if memory == "gru" else 4)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        # Attention q/k biases get gradients near zero at initialisation (softmax is shift-invariant), and Adam's
        # first steps move each weight by ~lr * sign(grad), turning reduction-order noise of ~1e-9 into ~1e-4
        # moves; every other tensor must agree to 1e-5. A wrong DDP set-up (unsynchronised gradients, different
        # batches, no cross-rank negatives) moves every tensor by ~lr = 1e-3.
        atol = 3e-4 if k.endswith("in_proj_bias") else 1e-5
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=atol, msg=k)


def test_check_finite_option_stops_with_step_and_tensor(gotolocal_root, tiny_cfg, tmp_path):
    from vlafoundry.train.trainer import NonFiniteError

    tr = Trainer(tiny_cfg("--train.steps", "10", "--train.check_finite", "true"), tmp_path / "r",
                 dataset_root=gotolocal_root)
    tr.fit(stop_after=2)
    with torch.no_grad():
        tr.policy.action_head.net[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"step 2: ") as info:
        tr.fit()
    assert "action_head" in str(info.value) and ("NaN" in str(info.value) or "non-finite" in str(info.value))


def test_mrm_without_vision_context_is_refused(gotolocal_root, tiny_cfg, tmp_path):
    cfg = tiny_cfg("--model.vision_layers", "0", "--pretrain.loss.mrm", "0.5")
    with pytest.raises(ValueError, match="loss.mrm > 0 needs model.vision_layers >= 1"):
        Trainer(cfg, tmp_path / "r", phase="pretrain", dataset_root=gotolocal_root)


@pytest.mark.parametrize("fusion", ["cross_attention", "early", "late", "film"])
def test_each_fusion_learns_on_real_demonstrations(gotolocal_root, tiny_cfg, tmp_path, fusion):
    cfg = tiny_cfg("--model.fusion", fusion, "--train.steps", "16", "--train.lr", "3e-3",
                   "--train.eval_every", "100", "--train.checkpoint_every", "100")
    Trainer(cfg, tmp_path / fusion, dataset_root=gotolocal_root).fit()
    recs = [json.loads(x) for x in (tmp_path / fusion / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0], losses


def test_metaworld_continuous_and_binned_heads_on_real_demonstrations(tmp_path_factory, tiny_args, tmp_path):
    pytest.importorskip("metaworld")
    from vlafoundry.data import generate_dataset
    from vlafoundry.train.config import load_config

    root = tmp_path_factory.mktemp("mw") / "ds"
    generate_dataset("metaworld/reach", 6, root, workers=1, seed=0, progress=False)
    for head in ("continuous", "binned"):
        cfg = load_config("metaworld-mt10", [*tiny_args, "--model.head", head, "--model.chunk", "2",
                                             "--model.num_bins", "32", "--train.steps", "20", "--train.lr", "3e-3",
                                             "--train.eval_every", "100", "--train.checkpoint_every", "100"])
        tr = Trainer(cfg, tmp_path / head, dataset_root=root)
        tr.fit()
        recs = [json.loads(x) for x in (tmp_path / head / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in recs if r["split"] == "train"]
        assert losses[-1] < 0.8 * losses[0], (head, losses)
        policy = tr.policy.eval()
        policy.reset()
        obs = {"state": tr.train_ds[0]["state"][-1:].numpy(), "instruction": [tr.train_ds[0]["instruction"]]}
        a = policy.select_action(obs)
        assert a.shape == (1, 4) and np.abs(a).max() <= 1.0


def test_memory_policy_trains_on_whole_episodes_resumes_exactly_and_acts(gotolocal_root, tiny_cfg, tmp_path):
    """model.memory=gru: the trainer serves whole episodes (batch_size counts episodes), the loss falls, a stopped
    and resumed run equals an uninterrupted one, and the checkpoint acts in closed loop with its memory."""
    from vlafoundry.envs import make_env

    ov = ("--model.memory", "gru", "--model.vision_layers", "0", "--train.batch_size", "8", "--train.lr", "3e-3",
          "--train.steps", "12", "--loss.contrastive", "0.5", "--data.augment", "colour")
    Trainer(tiny_cfg(*ov), tmp_path / "full", dataset_root=gotolocal_root).fit()
    Trainer(tiny_cfg(*ov), tmp_path / "cut", dataset_root=gotolocal_root).fit(stop_after=5)
    tr = Trainer(tiny_cfg(*ov), tmp_path / "cut", dataset_root=gotolocal_root)
    assert len(tr.train_ds) == tr.train_ds.num_episodes < tr.train_ds.num_steps  # samples are episodes
    tr.fit()
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert "memory.weight_hh_l0" in a and all(torch.equal(a[k], b[k]) for k in a)
    recs = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["bc"] for r in recs if r["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0], losses
    policy, _, _ = policy_from_checkpoint(tmp_path / "full")
    env = make_env("babyai/GoToLocal")
    obs = env.reset(seed=10**9)
    policy.reset()
    for _ in range(3):
        act = policy.select_action({k: [v] if k == "instruction" else v[None] for k, v in obs.items() if k != "task"})
        obs, *_ = env.step(act[0])
    assert policy.acting.memory_h is not None and policy.acting.memory_h.abs().sum() > 0


def test_colour_augmentation_is_applied_and_validated(gotolocal_root, tiny_cfg, tmp_path):
    """data.augment colour: every training batch is relabelled (the run differs from one without it, with the same
    data order), validation batches are not; non-BabyAI or RGB data is refused with the reason."""
    from vlafoundry.config import ConfigError

    ov = ("--train.steps", "3", "--loss.contrastive", "0.5")
    plain = Trainer(tiny_cfg(*ov), tmp_path / "plain", dataset_root=gotolocal_root)
    aug = Trainer(tiny_cfg(*ov, "--data.augment", "colour"), tmp_path / "aug", dataset_root=gotolocal_root)
    seen: list[list[str]] = []
    real = aug.policy.forward

    def spy(batch, loss_cfg=None):
        seen.append(list(batch["instruction"]))
        return real(batch, loss_cfg)

    aug.policy.forward = spy
    plain.fit()
    aug.fit()
    raw = [aug.train_ds.__getitems__(idx)["instruction"] for idx in _replay_sampler(aug)]
    assert any(s != r for s, r in zip(seen, raw)), "no batch was relabelled"
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "aug")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert aug._augment is not None and plain._augment is None
    with pytest.raises(ConfigError, match="data.augment: expected 'none' with data.image 'rgb'"):
        tiny_cfg("--data.augment", "colour", "--data.image", "rgb")
    with pytest.raises(ConfigError, match=r"data.augment: expected one of \['none', 'colour'\], got 'flip'"):
        tiny_cfg("--data.augment", "flip")


def _replay_sampler(tr):
    """The batch indices a fresh sampler with the trainer's settings serves (the order the run used)."""
    from vlafoundry.train.sampler import ResumableBatchSampler

    s = ResumableBatchSampler(len(tr.train_ds), tr.opt_cfg.batch_size, seed=tr.cfg.train.seed)
    return [s.next_batch() for _ in range(tr.opt_cfg.steps)]


def test_resume_of_an_init_from_run_keeps_its_keys_and_refuses_a_changed_runtime_key(gotolocal_root, tiny_cfg,
                                                                                    tmp_path, capsys):
    """Resuming a run started --init-from: the architecture is the init checkpoint's (a differing override is named
    and ignored, as on start); the run's training/acting keys are its own, so changing one on resume is refused like
    any model.* change (it used to be replaced by the saved value without a word)."""
    cfg = tiny_cfg("--pretrain.steps", "2", "--pretrain.batch_size", "16")
    Trainer(cfg, tmp_path / "pre", phase="pretrain", dataset_root=gotolocal_root).fit()
    ov = ("--train.steps", "4", "--model.action_selection", "greedy")
    Trainer(tiny_cfg(*ov), tmp_path / "bc", init_from=tmp_path / "pre", dataset_root=gotolocal_root).fit(stop_after=2)
    capsys.readouterr()
    tr = Trainer(tiny_cfg(*ov, "--model.d_model", "48"), tmp_path / "bc", init_from=tmp_path / "pre",
                 dataset_root=gotolocal_root)
    tr.fit()
    out = capsys.readouterr().out
    assert "keeping its architecture (model.d_model: 32 -> 48 ignored)" in out and "resumed from step 2" in out
    assert tr.cfg.model.action_selection == "greedy" and tr.cfg.model.d_model == 32
    with pytest.raises(ConfigError, match="model.action_selection: 'greedy' -> 'sample'"):
        Trainer(tiny_cfg("--train.steps", "6", "--model.action_selection", "sample"), tmp_path / "bc",
                init_from=tmp_path / "pre", dataset_root=gotolocal_root).fit()
