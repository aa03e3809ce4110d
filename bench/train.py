"""Training throughput and model FLOP utilisation (MFU) of the default policy on real BabyAI GoToLocal data.

The default policy is ``load_config("babyai-gotolocal").model`` (symbolic 7x7x3 grid -> 49 cell tokens, scratch
text encoder, FiLM fusion, the preset's recurrent memory, discrete head; d_model=128), built with
:meth:`VLAPolicy.from_dataset` on ~200 generated GoToLocal episodes (or ``--data DIR``). One training step is the
trainer's: batch assembly (``DemoDataset.__getitems__``), forward (behaviour-cloning loss with the preset's loss
weights), backward, gradient clipping and the AdamW step (``build_optimizer``). Batches are ``--batch-size``
single steps: with the memory each sample is one GRU step from a zero state, the same per-step work (encoders,
fusion, one GRU step, head) as the trainer's whole-episode batches, at a fixed batch shape.

FLOPs per step: :class:`torch.utils.flop_counter.FlopCounterMode` over one forward + backward (matmuls, linear,
bmm, convolutions, and attention: torch's SDPA formulas registered for the CPU flash kernel, which the counter
does not know; element-wise ops, norms, softmax and the optimiser are not counted, as is usual for MFU).

Machine reference ("matmul FLOP/s"): the best fp32 rate of square ``N x N @ N x N`` matmul loops (``torch.mm``
into a preallocated output), N in ``--matmul-sizes`` (default 512 and 1024), measured in the same process and
interleaved with the training rounds. N=512 (1 MiB operands, cache-resident) gives the compute-bound rate; N=1024
(4 MiB operands, the size of the model's activation matrices, e.g. (B*49=12544) x 128 fp32 = 6 MiB) is
memory-bound on small-cache VMs; the better of the two is the reference. MFU = achieved model FLOP/s / that
rate. For context the table also gives the rate of the model's most common matmul shape, (B*49, 128) @ (128, 256).

Timing: ``--rounds`` rounds, each = the matmul measurements + ``--steps`` timed steps; medians over all steps and
all rounds. ``--clock auto`` (default) times with this process's CPU time when ``--threads 1`` (so a shared,
loaded machine that preempts the process does not distort rates; wall-clock samples/s and the CPU/wall ratio are
reported too), and with wall time for more threads.

    python bench/train.py [--data DIR] [--episodes 200] [--batch-size 256] [--steps 10] [--rounds 5]
                          [--threads 1] [--quick]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from vlafoundry.data import META_FILE, DemoDataset, generate_dataset
from vlafoundry.models.policy import VLAPolicy, count_parameters
from vlafoundry.train.config import ExperimentConfig, load_config
from vlafoundry.train.trainer import build_optimizer

PRESET = "babyai-gotolocal"
Batch = dict[str, Any]
Clock = Callable[[], float]


def pick_clock(kind: str, threads: int) -> tuple[str, Clock]:
    """``cpu``: this process's CPU time (time.process_time), immune to time-sharing of a loaded machine but only
    meaningful with one thread; ``wall``: time.perf_counter; ``auto``: cpu with one thread, else wall."""
    if kind == "auto":
        kind = "cpu" if threads == 1 else "wall"
    if kind not in ("cpu", "wall"):
        raise SystemExit(f"--clock: expected auto, cpu or wall, got {kind!r}")
    return kind, (time.process_time if kind == "cpu" else time.perf_counter)


# ---------------------------------------------------------------------------------------------- data
def ensure_data(data: str | None, episodes: int, tmp: Path, env: str = "babyai/GoToLocal") -> Path:
    """``data`` if given (must be a vlafoundry dataset), else ``episodes`` freshly generated demos under ``tmp``."""
    if data is not None:
        root = Path(data).expanduser()
        if not (root / META_FILE).exists():
            raise SystemExit(f"--data: {root} is not a vlafoundry dataset (no {META_FILE})")
        return root
    root = tmp / "gotolocal"
    generate_dataset(env, episodes, root, workers=1, seed=0, image="symbolic", progress=False)
    return root


class BatchStream:
    """Random batches of ``batch_size`` sample indices (with replacement across epochs), as the trainer draws."""

    def __init__(self, ds: DemoDataset, batch_size: int, seed: int = 0) -> None:
        self.ds, self.batch_size = ds, batch_size
        self.rng = np.random.default_rng(seed)

    def indices(self) -> list[int]:
        return self.rng.integers(0, len(self.ds), self.batch_size).tolist()

    def next(self) -> Batch:
        return self.ds.__getitems__(self.indices())


# ---------------------------------------------------------------------------------------------- the step
def build_default(cfg: ExperimentConfig, root: Path, seed: int = 0) -> tuple[VLAPolicy, DemoDataset]:
    ds = DemoDataset(root, split="train", val_fraction=cfg.data.val_fraction, split_seed=cfg.data.seed,
                     history=cfg.model.history, chunk=cfg.model.chunk)
    torch.manual_seed(seed)
    policy = VLAPolicy.from_dataset(cfg.model, ds)
    policy.train()
    return policy, ds


def make_train_step(
    model: nn.Module, loss_fn: Callable[[Batch], torch.Tensor], opt: torch.optim.Optimizer, grad_clip: float,
    clock: Clock = time.perf_counter,
) -> Callable[[Batch], tuple[float, float, float]]:
    """The trainer's step (forward, backward, clip, AdamW); returns ``clock`` seconds of (forward, backward, opt)."""

    def step(batch: Batch) -> tuple[float, float, float]:
        t0 = clock()
        loss = loss_fn(batch)
        t1 = clock()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = clock()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        t3 = clock()
        return t1 - t0, t2 - t1, t3 - t2

    return step


# torch's counter knows the CUDA attention kernels but not the CPU flash kernel SDPA dispatches to here.
def _cpu_sdpa_flops(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)


def _cpu_sdpa_backward_flops(grad_shape: Any, q_shape: Any, k_shape: Any, v_shape: Any, *args: Any,
                             out_shape: Any = None, **kw: Any) -> int:
    return sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)


_aten = torch.ops.aten
CPU_SDPA_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Matmul-class FLOPs of ``fn()`` (which should run forward + backward), in total and per aten operator."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as fc:
        fn()
    per_op: dict[str, int] = {}
    for op, n in fc.get_flop_counts().get("Global", {}).items():
        name = str(op).removeprefix("aten.").replace("_scaled_dot_product_flash_attention_for_cpu", "sdpa_cpu")
        per_op[name] = per_op.get(name, 0) + int(n)
    return int(fc.get_total_flops()), per_op


def count_step_flops(loss_fn: Callable[[Batch], torch.Tensor], batch: Batch) -> tuple[int, dict[str, int]]:
    """Matmul-class FLOPs of one forward + backward of ``loss_fn`` on ``batch``."""
    return count_flops(lambda: loss_fn(batch).backward())


# ---------------------------------------------------------------------------------------------- the machine
def matmul_rate(m: int, k: int, n: int, min_time: float = 0.25, clock: Clock = time.perf_counter) -> float:
    """fp32 FLOP/s of ``(m, k) @ (k, n)`` into a preallocated output, median of >= 5 calls timed by ``clock``."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)  # warm-up
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - t_start < min_time:
        t0 = clock()
        torch.mm(a, b, out=out)
        times.append(clock() - t0)
    return 2.0 * m * k * n / statistics.median(times)


def square_matmul_rates(sizes: list[int], min_time: float = 0.2, clock: Clock = time.perf_counter
                        ) -> dict[int, float]:
    """FLOP/s of the square fp32 matmul for each N in ``sizes``."""
    return {n: matmul_rate(n, n, n, min_time, clock) for n in sizes}


def best_square_rate(history: dict[int, list[float]]) -> tuple[int, float]:
    """(N, FLOP/s) of the size whose median rate over the rounds is highest."""
    med = {n: statistics.median(v) for n, v in history.items()}
    n = max(med, key=med.__getitem__)
    return n, med[n]


# ---------------------------------------------------------------------------------------------- report
def model_summary(cfg: ExperimentConfig) -> str:
    m = cfg.model
    return (f"vision={m.vision} x{m.vision_layers} blocks, language={m.language} x{m.text_layers}, "
            f"fusion={m.fusion} x{m.num_layers}, d_model={m.d_model}, d_ff={m.d_ff}, history={m.history}, memory={m.memory}")


def fmt_table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="existing GoToLocal dataset dir (default: generate into a temp dir)")
    ap.add_argument("--episodes", type=int, default=200, help="episodes to generate when --data is not given")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--clock", default="auto", help="cpu | wall | auto (cpu time with 1 thread, else wall)")
    ap.add_argument("--matmul-sizes", default="512,1024", help="N of the square reference matmuls (best is used)")
    ap.add_argument("--quick", action="store_true", help="3 rounds x 4 steps, 120 episodes (~30 s)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.warmup = min(args.steps, 4), min(args.rounds, 3), min(args.warmup, 2)
        args.episodes = min(args.episodes, 120)
    torch.set_num_threads(args.threads)
    clock_kind, clock = pick_clock(args.clock, args.threads)

    cfg = load_config(PRESET)
    with tempfile.TemporaryDirectory(prefix="vlafoundry-bench-train-") as tmp:
        t0 = time.perf_counter()
        root = ensure_data(args.data, args.episodes, Path(tmp))
        gen_s = time.perf_counter() - t0
        policy, ds = build_default(cfg, root)
        stream = BatchStream(ds, args.batch_size)
        opt = build_optimizer(policy, cfg.train)
        loss_cfg = cfg.loss

        def loss_fn(batch: Batch) -> torch.Tensor:
            return policy(batch, loss_cfg)[0]

        step = make_train_step(policy, loss_fn, opt, cfg.train.grad_clip, clock)
        flops, per_op = count_step_flops(loss_fn, stream.next())
        opt.zero_grad(set_to_none=True)
        for _ in range(args.warmup):
            step(stream.next())

        sizes = [int(n) for n in args.matmul_sizes.split(",")]
        square: dict[int, list[float]] = {n: [] for n in sizes}
        shape_mm = (args.batch_size * policy.num_image_tokens, cfg.model.d_model, cfg.model.d_ff)
        data_t, fwd_t, bwd_t, opt_t, step_t, shaped, wall_t = [], [], [], [], [], [], []
        for _ in range(args.rounds):
            for n, rate in square_matmul_rates(sizes, clock=clock).items():
                square[n].append(rate)
            shaped.append(matmul_rate(*shape_mm, min_time=0.1, clock=clock))
            for _ in range(args.steps):
                w0 = time.perf_counter()
                t0 = clock()
                batch = stream.next()
                data_t.append(clock() - t0)
                f, b, o = step(batch)
                wall_t.append(time.perf_counter() - w0)
                fwd_t.append(f)
                bwd_t.append(b)
                opt_t.append(o)
                step_t.append(f + b + o)

    med = statistics.median
    t_step, t_data = med(step_t), med(data_t)
    bs = args.batch_size
    achieved = flops / t_step
    n_mm, peak = best_square_rate(square)
    result = {
        "bench": "train",
        "preset": PRESET,
        "batch_size": bs,
        "threads": args.threads,
        "clock": clock_kind,
        "model": model_summary(cfg),
        "parameters": count_parameters(policy),
        "train_samples": len(ds),
        "samples_per_s": bs / (t_step + t_data),
        "samples_per_s_model_only": bs / t_step,
        "samples_per_s_wall": bs / med(wall_t),
        "cpu_share": (t_step + t_data) / med(wall_t),
        "step_ms": 1e3 * (t_step + t_data),
        "data_ms": 1e3 * t_data,
        "forward_ms": 1e3 * med(fwd_t),
        "backward_ms": 1e3 * med(bwd_t),
        "optimizer_ms": 1e3 * med(opt_t),
        "flops_per_step": flops,
        "flops_per_sample": flops / bs,
        "achieved_gflops": achieved / 1e9,
        "matmul_size": n_mm,
        "matmul_gflops": peak / 1e9,
        "square_matmul_gflops": {str(n): med(v) / 1e9 for n, v in square.items()},
        "shaped_matmul": list(shape_mm),
        "shaped_matmul_gflops": med(shaped) / 1e9,
        "mfu": achieved / peak,
        "mfu_vs_shaped": achieved / med(shaped),
        "steps_timed": len(step_t),
        "generation_s": gen_s,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:4]
    result["flops_by_op"] = dict(top)
    rows = [
        ("policy", f"{PRESET} default ({result['parameters']:,} params), {len(ds)} train samples"),
        ("architecture", result["model"]),
        ("batch / threads", f"{bs} / {args.threads}"),
        ("timed steps", f"{len(step_t)} ({args.rounds} rounds x {args.steps}), medians, {clock_kind} clock"),
        ("step (data+fwd+bwd+opt)", f"{result['step_ms']:.1f} ms"),
        ("  batch assembly", f"{result['data_ms']:.1f} ms"),
        ("  forward", f"{result['forward_ms']:.1f} ms"),
        ("  backward", f"{result['backward_ms']:.1f} ms"),
        ("  clip + AdamW", f"{result['optimizer_ms']:.1f} ms"),
        ("samples/s (full step)", f"{result['samples_per_s']:,.0f}"),
        ("samples/s (model only)", f"{result['samples_per_s_model_only']:,.0f}"),
        ("samples/s (wall clock)", f"{result['samples_per_s_wall']:,.0f} (CPU time / wall time: "
                                   f"{result['cpu_share']:.2f})"),
        ("FLOPs / step (fwd+bwd)", f"{flops / 1e9:.2f} GFLOP ({flops / bs / 1e6:.2f} MFLOP/sample)"),
        ("  largest ops", ", ".join(f"{k}={v / 1e9:.2f}G" for k, v in top)),
        ("achieved", f"{result['achieved_gflops']:.2f} GFLOP/s"),
        ("square fp32 matmul", ", ".join(f"{n}^3: {med(v) / 1e9:.1f}" for n, v in square.items())
         + f" GFLOP/s (reference: {n_mm}^3)"),
        (f"matmul {shape_mm[0]}x{shape_mm[1]}x{shape_mm[2]}", f"{result['shaped_matmul_gflops']:.2f} GFLOP/s"),
        ("MFU (vs best square mm)", f"{100 * result['mfu']:.1f} %"),
        ("MFU (vs model-shaped mm)", f"{100 * result['mfu_vs_shaped']:.1f} %"),
    ]
    print(fmt_table(rows))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
