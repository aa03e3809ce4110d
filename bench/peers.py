"""Speed against peers, in one process: (a) the default policy vs the BabyAI reference model; (b) our encoder block
vs ``torch.nn.TransformerEncoderLayer``.

(a) Training step (forward, backward, gradient clipping, AdamW from ``build_optimizer``, same settings) on the
same real GoToLocal batches (``--batch-size`` 256) for

* ours: the default policy, ``load_config("babyai-gotolocal").model`` (grid tokens + transformer + FiLM MLPs);
* BabyAI: the imitation-learning model of Chevalier-Boisvert et al. (ICLR 2019) as refined in BabyAI 1.1
  (Hui et al., 2020), architecture ``bow_endpool_res`` with a GRU instruction encoder and memory, reimplemented
  below from the papers: bag-of-words cell embedding (one table for object/colour/state values, summed per cell),
  two 3x3 conv layers with BatchNorm + ReLU, two FiLM blocks (3x3 conv, BN, ReLU, 3x3 conv, FiLM affine from the
  instruction, BN, ReLU) with residual connections, max pooling over the whole 7x7 map at the end ("endpool"),
  an LSTM memory cell and the actor MLP (Linear -> Tanh -> Linear). Hidden size = our ``d_model`` (128, which
  is also BabyAI's image/instruction/memory size). Loss: cross-entropy minus 0.01 x entropy (BabyAI's IL loss).
  Simplifications, documented: one time step per sample with a zero initial memory (BPTT length 1; BabyAI
  trains on 20-step windows after a no-grad pass that recomputes memories, which costs more per sample); the
  critic head, unused by imitation learning, is left out; the GRU's last valid output encodes the instruction.

Both models get the same batches; both tokenise instructions inside the step (each with a per-string cache).
Reported: samples/s and MFU (FLOPs from ``FlopCounterMode`` over one step per second, divided by the best fp32
rate of square 512^3 / 1024^3 matmuls measured in the same rounds, as in bench/train.py) and the ratios
ours / BabyAI (> 1: ours faster / better utilised). oneDNN's 3x3 convolutions can run faster than torch.mm, so
the BabyAI model's MFU may approach or pass 100 %; the table gives the rate of its 3x3 conv alone for context.

(b) ``vlafoundry.nn.TransformerEncoderBlock`` vs ``torch.nn.TransformerEncoderLayer(batch_first=True,
norm_first=True, activation="gelu", dropout=0)`` with identical weights (outputs compared), forward + backward,
at (B, L, D, heads, d_ff) = (64, 50, 128, 4, 512) and (16, 256, 256, 8, 1024), and the first size with a key
padding mask (a quarter of each row padded). Ratio = torch time / ours (> 1: ours faster).

Repeats are interleaved (alternating order) and medians reported. ``--clock auto`` (default) times with this
process's CPU time when ``--threads 1`` (robust on a shared, loaded machine), with wall time otherwise.

    python bench/peers.py [--data DIR] [--batch-size 256] [--rounds 5] [--steps 3] [--threads 1] [--quick]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import (  # noqa: E402  (bench/train.py: shared data, step, FLOP and matmul helpers)
    PRESET, Batch, BatchStream, Clock, best_square_rate, build_default, count_flops, ensure_data, fmt_table,
    make_train_step, model_summary, pick_clock, square_matmul_rates,
)

from vlafoundry.models.policy import count_parameters  # noqa: E402
from vlafoundry.nn.blocks import TransformerEncoderBlock  # noqa: E402
from vlafoundry.train.config import load_config  # noqa: E402
from vlafoundry.train.trainer import build_optimizer  # noqa: E402


# ---------------------------------------------------------------------------------------------- BabyAI model
class ImageBOWEmbedding(nn.Module):
    """BabyAI's bag-of-words cell embedding: channel c value v -> row ``c * max_value + v``; summed over channels."""

    def __init__(self, max_value: int, embedding_dim: int) -> None:
        super().__init__()
        self.max_value = max_value
        self.embedding = nn.Embedding(3 * max_value, embedding_dim)
        self.register_buffer("offsets", torch.arange(3) * max_value, persistent=False)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) integer grid -> (B, D, H, W)."""
        idx = grid.long() + self.offsets  # (B, H, W, 3)
        return self.embedding(idx).sum(3).permute(0, 3, 1, 2)  # (B, D, H, W)


class FiLM(nn.Module):
    """BabyAI's FiLM block: conv3x3 -> BN -> ReLU -> conv3x3 -> (gamma * x + beta) -> BN -> ReLU."""

    def __init__(self, in_features: int, out_features: int, in_channels: int, imm_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, imm_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(imm_channels)
        self.conv2 = nn.Conv2d(imm_channels, out_features, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_features)
        self.weight = nn.Linear(in_features, out_features)
        self.bias = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), cond (B, F) -> (B, out_features, H, W)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.conv2(x)
        x = x * self.weight(cond)[:, :, None, None] + self.bias(cond)[:, :, None, None]
        return F.relu(self.bn2(x))


class BabyAIModel(nn.Module):
    """BabyAI 1.1 IL model, ``bow_endpool_res`` + GRU instruction encoder + LSTM memory (actor only)."""

    def __init__(self, vocab_size: int, num_actions: int, hidden: int = 128, max_value: int = 147,
                 num_film: int = 2) -> None:
        super().__init__()
        self.hidden = hidden
        self.image_conv = nn.Sequential(
            ImageBOWEmbedding(max_value, hidden),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
        )
        self.word_embedding = nn.Embedding(vocab_size, hidden)
        self.instr_rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.controllers = nn.ModuleList(FiLM(hidden, hidden, hidden, hidden) for _ in range(num_film))
        self.film_pool = nn.MaxPool2d(kernel_size=7, stride=2)
        self.memory_rnn = nn.LSTMCell(hidden, hidden)
        self.actor = nn.Sequential(nn.Linear(hidden, 64), nn.Tanh(), nn.Linear(64, num_actions))

    def instruction_embedding(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64, lengths (B,) -> (B, hidden): the GRU output at each instruction's last word."""
        out, _ = self.instr_rnn(self.word_embedding(ids))  # (B, L, hidden)
        return out[torch.arange(ids.shape[0]), lengths - 1]

    def forward(self, grid: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                memory: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """grid (B, 7, 7, 3), ids (B, L), lengths (B,), memory ((B, h), (B, h)) -> logits (B, A), new memory."""
        cond = self.instruction_embedding(ids, lengths)  # (B, h)
        x = self.image_conv(grid)  # (B, h, 7, 7)
        for film in self.controllers:
            x = film(x, cond) + x  # residual ("res")
        x = F.relu(self.film_pool(x)).flatten(1)  # (B, h)
        h, c = self.memory_rnn(x, memory)
        return self.actor(h), (h, c)


class WordVocab:
    """BabyAI's instruction preprocessor: lower-case words -> ids (0 = padding), cached per distinct string."""

    def __init__(self, corpus: list[str]) -> None:
        words = sorted({w for s in corpus for w in re.findall("([a-z]+)", s.lower())})
        self.index = {w: i + 1 for i, w in enumerate(words)}
        self._cache: dict[str, list[int]] = {}

    @property
    def size(self) -> int:
        return len(self.index) + 1

    def encode(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for s in instructions:
            ids = self._cache.get(s)
            if ids is None:
                ids = self._cache[s] = [self.index[w] for w in re.findall("([a-z]+)", s.lower())]
            rows.append(ids)
        width = max(len(r) for r in rows)
        out = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out, torch.tensor([len(r) for r in rows])


def babyai_loss_fn(model: BabyAIModel, vocab: WordVocab) -> Callable[[Batch], torch.Tensor]:
    """BabyAI's imitation loss on one step: -log p(expert action) - 0.01 * entropy, zero initial memory."""

    def loss_fn(batch: Batch) -> torch.Tensor:
        ids, lengths = vocab.encode(batch["instruction"])
        grid = batch["image"][:, -1]  # newest frame (B, 7, 7, 3)
        b = grid.shape[0]
        memory = (torch.zeros(b, model.hidden), torch.zeros(b, model.hidden))
        logits, _ = model(grid, ids, lengths, memory)
        logp = F.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1).mean()
        return F.nll_loss(logp, batch["action"][:, 0].long()) - 0.01 * entropy

    return loss_fn


# ---------------------------------------------------------------------------------------------- (a)
def conv_rate(batch: int, channels: int, clock: Clock, min_time: float = 0.1) -> float:
    """fp32 FLOP/s of BabyAI's 3x3 conv (channels -> channels on 7x7 maps), forward + backward (3x forward FLOPs)."""
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, 7, 7, requires_grad=True)
    grad = torch.randn(batch, channels, 7, 7)
    conv(x).backward(grad)  # warm-up
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - t_start < min_time:
        t0 = clock()
        conv(x).backward(grad)
        times.append(clock() - t0)
    return 3 * 2.0 * batch * 49 * channels * channels * 9 / statistics.median(times)


def compare_policies(args: argparse.Namespace, tmp: Path, clock: Clock) -> dict[str, Any]:
    cfg = load_config(PRESET)
    root = ensure_data(args.data, args.episodes, tmp)
    ours, ds = build_default(cfg, root)
    torch.manual_seed(0)
    vocab = WordVocab(list(ds.instructions))
    ref = BabyAIModel(vocab.size, ds.spec.num_actions, hidden=cfg.model.d_model)
    ref.train()
    loss_fns = {"ours": lambda batch: ours(batch, cfg.loss)[0], "babyai": babyai_loss_fn(ref, vocab)}
    models = {"ours": ours, "babyai": ref}
    steps = {k: make_train_step(m, loss_fns[k], build_optimizer(m, cfg.train), cfg.train.grad_clip, clock)
             for k, m in models.items()}
    stream = BatchStream(ds, args.batch_size)
    flops = {}
    for k in models:
        batch = stream.next()
        flops[k], _ = count_flops(lambda: loss_fns[k](batch).backward())
        for m in models.values():
            m.zero_grad(set_to_none=True)
    for _ in range(args.warmup):
        batch = stream.next()
        for k in models:
            steps[k](batch)
    times: dict[str, list[float]] = {k: [] for k in models}
    sizes = [int(n) for n in args.matmul_sizes.split(",")]
    square: dict[int, list[float]] = {n: [] for n in sizes}
    convs: list[float] = []
    order = list(models)
    for r in range(args.rounds):
        for n, rate in square_matmul_rates(sizes, min_time=0.15, clock=clock).items():
            square[n].append(rate)
        convs.append(conv_rate(args.batch_size, cfg.model.d_model, clock))
        batches = [stream.next() for _ in range(args.steps)]
        for k in order if r % 2 == 0 else order[::-1]:
            for batch in batches:
                times[k].append(sum(steps[k](batch)))
    n_mm, peak = best_square_rate(square)
    out: dict[str, Any] = {"model": model_summary(cfg), "matmul_size": n_mm, "matmul_gflops": peak / 1e9, "batch_size": args.batch_size,
                           "square_matmul_gflops": {str(n): statistics.median(v) / 1e9 for n, v in square.items()},
                           "conv3x3_gflops": statistics.median(convs) / 1e9}
    for k in models:
        t = statistics.median(times[k])
        out[k] = {"parameters": count_parameters(models[k]), "step_ms": 1e3 * t,
                  "samples_per_s": args.batch_size / t, "gflops_per_step": flops[k] / 1e9,
                  "mfu": flops[k] / t / peak}
    out["speed_ratio"] = out["ours"]["samples_per_s"] / out["babyai"]["samples_per_s"]
    out["mfu_ratio"] = out["ours"]["mfu"] / out["babyai"]["mfu"]
    return out


# ---------------------------------------------------------------------------------------------- (b)
def paired_blocks(d: int, heads: int, d_ff: int) -> tuple[TransformerEncoderBlock, nn.TransformerEncoderLayer]:
    """Our block and torch's layer with the same weights (pre-norm, GELU, dropout 0)."""
    torch.manual_seed(0)
    ours = TransformerEncoderBlock(d, heads, d_ff, dropout=0.0, norm_first=True)
    ref = nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0.0, activation="gelu", batch_first=True,
                                     norm_first=True)
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.attn.in_proj_weight)
        ref.self_attn.in_proj_bias.copy_(ours.attn.in_proj_bias)
        ref.self_attn.out_proj.load_state_dict(ours.attn.out_proj.state_dict())
        ref.linear1.load_state_dict(ours.ffn.fn.linear1.state_dict())
        ref.linear2.load_state_dict(ours.ffn.fn.linear2.state_dict())
        ref.norm1.load_state_dict(ours.norm1.state_dict())
        ref.norm2.load_state_dict(ours.norm2.state_dict())
    return ours.train(), ref.train()


def compare_blocks(size: tuple[int, int, int, int, int], masked: bool, rounds: int, reps: int,
                   clock: Clock = time.perf_counter) -> dict[str, Any]:
    b, length, d, heads, d_ff = size
    ours, ref = paired_blocks(d, heads, d_ff)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, length, d, generator=g, requires_grad=True)
    grad = torch.randn(b, length, d, generator=g)
    valid = None
    if masked:
        lengths = torch.randint(length - length // 4, length + 1, (b,), generator=g)
        lengths[0] = length - length // 4
        valid = torch.arange(length)[None, :] < lengths[:, None]  # (B, L) True = token
    fns = {"ours": lambda: ours(x, valid),
           "torch": lambda: ref(x, src_key_padding_mask=None if valid is None else ~valid)}
    with torch.no_grad():
        a, r = fns["ours"](), fns["torch"]()
        keep = torch.ones_like(a[..., 0], dtype=torch.bool) if valid is None else valid
        max_diff = float((a - r)[keep].abs().max())

    def run(k: str) -> float:
        t0 = clock()
        fns[k]().backward(grad)
        return clock() - t0

    for k in fns:  # warm-up
        run(k)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(rounds):
        for k in (["ours", "torch"] if i % 2 == 0 else ["torch", "ours"]):
            times[k].extend(run(k) for _ in range(reps))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"B": b, "L": length, "D": d, "heads": heads, "d_ff": d_ff, "masked": masked,
            "ours_ms": 1e3 * med["ours"], "torch_ms": 1e3 * med["torch"], "ratio": med["torch"] / med["ours"],
            "max_abs_diff": max_diff}


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="existing GoToLocal dataset dir (default: generate into a temp dir)")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per model per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--block-reps", type=int, default=3, help="block forward+backward calls per impl per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="auto", help="cpu | wall | auto (cpu time with 1 thread, else wall)")
    ap.add_argument("--matmul-sizes", default="512,1024", help="square reference matmuls (best is used)")
    ap.add_argument("--quick", action="store_true", help="3 rounds x 2 steps, 120 episodes (< 60 s)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = min(args.rounds, 3), min(args.steps, 2), 1
        args.block_reps, args.episodes = min(args.block_reps, 2), min(args.episodes, 120)
    torch.set_num_threads(args.threads)
    clock_kind, clock = pick_clock(args.clock, args.threads)

    with tempfile.TemporaryDirectory(prefix="vlafoundry-bench-peers-") as tmp:
        pol = compare_policies(args, Path(tmp), clock)
    sizes = [((64, 50, 128, 4, 512), False), ((64, 50, 128, 4, 512), True), ((16, 256, 256, 8, 1024), False)]
    blocks = [compare_blocks(s, m, args.rounds, args.block_reps, clock) for s, m in sizes]

    o, r = pol["ours"], pol["babyai"]
    rows = [
        ("(a) training step, batch", f"{args.batch_size}, {args.threads} thread(s), medians of interleaved repeats, "
                                     f"{clock_kind} clock"),
        ("  model", "ours (default policy) | BabyAI 1.1 bow_endpool_res + GRU + LSTM"),
        ("  ours", pol["model"]),
        ("  parameters", f"{o['parameters']:,} | {r['parameters']:,}"),
        ("  step", f"{o['step_ms']:.1f} ms | {r['step_ms']:.1f} ms"),
        ("  samples/s", f"{o['samples_per_s']:,.0f} | {r['samples_per_s']:,.0f}  -> ratio {pol['speed_ratio']:.2f}x"),
        ("  GFLOP/step", f"{o['gflops_per_step']:.2f} | {r['gflops_per_step']:.2f}"),
        ("  MFU", f"{100 * o['mfu']:.1f} % | {100 * r['mfu']:.1f} %  -> ratio {pol['mfu_ratio']:.2f}x "
                  f"(ref. matmul {pol['matmul_size']}^3: {pol['matmul_gflops']:.1f} GFLOP/s)"),
        ("  for context", f"BabyAI's 3x3 conv alone, fwd+bwd: {pol['conv3x3_gflops']:.1f} GFLOP/s "
                          f"= {100 * pol['conv3x3_gflops'] / pol['matmul_gflops']:.0f} % of the matmul reference"),
        ("(b) encoder block fwd+bwd", "ours | torch.nn.TransformerEncoderLayer -> torch/ours"),
    ]
    for blk in blocks:
        name = f"  B={blk['B']} L={blk['L']} D={blk['D']} h={blk['heads']}" + (" +mask" if blk["masked"] else "")
        rows.append((name, f"{blk['ours_ms']:.2f} ms | {blk['torch_ms']:.2f} ms -> {blk['ratio']:.2f}x "
                           f"(max |diff| {blk['max_abs_diff']:.1e})"))
    print(fmt_table(rows))
    result = {"bench": "peers", "threads": args.threads, "clock": clock_kind, "policy": pol, "blocks": blocks}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
