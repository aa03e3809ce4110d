"""Benchmark: vlafoundry MultiHeadAttention vs torch.nn.MultiheadAttention vs the chapter's attention (CPU, fp32).

Self-attention forward + backward, d_model=256, 8 heads, dropout 0 (training mode), sizes (B, L) = (32, 128),
(8, 512), (2, 2048). The three implementations share weights and inputs, are timed interleaved in one process, and
the median is reported as a speed ratio (ours / baseline, > 1 = ours faster). Memory at L=2048: bytes of activations
saved for backward (``torch.autograd.graph.saved_tensors_hooks``, storages counted once, parameters excluded) and
the growth of peak RSS during one forward + backward in a fresh subprocess.

    python bench/attention.py [--quick]

Targets: ours >= 0.95x torch.nn.MultiheadAttention; >= 1.0x / 2x / 2.5x the chapter's attention for the three
sizes; saved activations at L=2048 under half of the chapter's. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlafoundry.nn.attention import MultiHeadAttention

D_MODEL, HEADS = 256, 8
SIZES = [(32, 128), (8, 512), (2, 2048)]
SPEED_TARGETS_VS_CHAPTER = {128: 1.0, 512: 2.0, 2048: 2.5}


class ChapterMultiHeadAttention(nn.Module):
    """Faithful re-implementation of the chapter's attention: matmul -> masked_fill -> softmax -> dropout -> matmul."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.scale = math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query, key, value, mask=None):  # noqa: ANN001, ANN201 - kept as in the chapter
        b = query.size(0)
        q = self.q_proj(query).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / self.scale
        if mask is not None:
            scores.masked_fill_(mask == 0, float("-inf"))
        weights = self.dropout(F.softmax(scores, dim=-1))
        out = torch.matmul(weights, v).transpose(1, 2).contiguous().view(b, -1, self.d_model)
        return self.out_proj(out)


def build() -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], list[nn.Module]]:
    """Three modules with identical weights, wrapped as self-attention callables (and the modules)."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(D_MODEL, HEADS, dropout=0.0)
    ref = nn.MultiheadAttention(D_MODEL, HEADS, dropout=0.0, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    chap = ChapterMultiHeadAttention(D_MODEL, HEADS, dropout=0.0)
    with torch.no_grad():
        wq, wk, wv = ours.in_proj_weight.chunk(3)
        bq, bk, bv = ours.in_proj_bias.chunk(3)
        for lin, w, b in [(chap.q_proj, wq, bq), (chap.k_proj, wk, bk), (chap.v_proj, wv, bv)]:
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        chap.out_proj.load_state_dict(ours.out_proj.state_dict())
    impls = {
        "ours": lambda x: ours(x, x, x),
        "torch": lambda x: ref(x, x, x, need_weights=False)[0],  # need_weights=False: torch's fast SDPA path
        "chapter": lambda x: chap(x, x, x),
    }
    return impls, [ours, ref, chap]


def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> None:
    x.grad = None
    fn(x).backward(grad)


def check_agreement(impls: dict[str, Callable], x: torch.Tensor) -> float:
    with torch.no_grad():
        outs = [fn(x) for fn in impls.values()]
    return max(float((o - outs[0]).abs().max()) for o in outs[1:])


def time_size(impls: dict[str, Callable], b: int, length: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(b * length)
    x = torch.randn(b, length, D_MODEL, generator=g, requires_grad=True)
    grad = torch.randn(b, length, D_MODEL, generator=g)
    for fn in impls.values():  # warm-up
        fwd_bwd(fn, x, grad)
    times: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(repeats):  # interleaved: drift in machine load hits every implementation alike
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fwd_bwd(fn, x, grad)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def saved_activation_bytes(fn: Callable, params: set[int], x: torch.Tensor) -> int:
    """Bytes of distinct non-parameter storages that autograd keeps for backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    del out
    return sum(storages.values())


def _peak_rss_kib() -> int:
    """Peak RSS of this process image. Linux's VmHWM restarts at exec; ru_maxrss would inherit the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_child(name: str, b: int, length: int) -> None:
    impls, _ = build()
    x = torch.randn(b, length, D_MODEL, requires_grad=True)
    grad = torch.randn(b, length, D_MODEL)
    before = _peak_rss_kib()
    fwd_bwd(impls[name], x, grad)
    after = _peak_rss_kib()
    print(json.dumps({"peak_rss_growth_mib": (after - before) / 1024}))


def peak_rss_growth_mib(name: str, b: int, length: int) -> float:
    cmd = [sys.executable, __file__, "--rss-child", name, str(b), str(length)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_growth_mib"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--rss-child", nargs=3, metavar=("IMPL", "B", "L"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]))
        return

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    impls, modules = build()
    diff = check_agreement(impls, torch.randn(2, 64, D_MODEL))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, d_model {D_MODEL}, heads {HEADS}, fp32, "
          f"forward+backward, dropout 0; max output difference between implementations {diff:.2e}")
    print(f"{'B':>3} {'L':>5} | {'ours ms':>8} {'torch ms':>9} {'chapter ms':>10} | "
          f"{'vs torch':>8} {'vs chapter':>10} {'target':>7}")
    results: dict[str, dict] = {}
    passed = diff < 1e-4
    for b, length in SIZES:
        repeats = (3 if args.quick else 5) if length < 2048 else (2 if args.quick else 3)
        t = time_size(impls, b, length, repeats)
        vs_torch, vs_chap = t["torch"] / t["ours"], t["chapter"] / t["ours"]
        target = SPEED_TARGETS_VS_CHAPTER[length]
        ok = vs_torch >= 0.95 and vs_chap >= target
        passed &= ok
        print(f"{b:>3} {length:>5} | {1e3 * t['ours']:>8.1f} {1e3 * t['torch']:>9.1f} {1e3 * t['chapter']:>10.1f} | "
              f"{vs_torch:>7.2f}x {vs_chap:>9.2f}x {target:>6.1f}x {'ok' if ok else 'MISS'}")
        results[f"B{b}_L{length}"] = {
            "ours_ms": round(1e3 * t["ours"], 2), "torch_ms": round(1e3 * t["torch"], 2),
            "chapter_ms": round(1e3 * t["chapter"], 2), "speed_vs_torch": round(vs_torch, 3),
            "speed_vs_chapter": round(vs_chap, 3), "target_vs_chapter": target, "ok": ok,
        }

    b, length = SIZES[-1]
    x = torch.randn(b, length, D_MODEL, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
    memory: dict[str, dict[str, float]] = {}
    for name, fn in impls.items():
        saved = saved_activation_bytes(fn, params, x) / 2**20
        rss = peak_rss_growth_mib(name, b, length)
        memory[name] = {"saved_for_backward_mib": round(saved, 1), "peak_rss_growth_mib": round(rss, 1)}
    mem_ratio = memory["ours"]["saved_for_backward_mib"] / memory["chapter"]["saved_for_backward_mib"]
    passed &= mem_ratio < 0.5
    print(f"\nmemory at B={b}, L={length}: {'saved for backward MiB':>24} {'peak RSS growth MiB':>20}")
    for name, m in memory.items():
        print(f"  {name:<8} {m['saved_for_backward_mib']:>37.1f} {m['peak_rss_growth_mib']:>20.1f}")
    print(f"  ours / chapter saved activations: {mem_ratio:.3f} (target < 0.5)")
    print(json.dumps({"bench": "attention", "device": "cpu", "dtype": "float32", "d_model": D_MODEL, "heads": HEADS,
                      "speed": results, "memory_L2048": memory, "saved_ratio_ours_vs_chapter": round(mem_ratio, 4),
                      "all_targets_met": bool(passed)}))


if __name__ == "__main__":
    main()
