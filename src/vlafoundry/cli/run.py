"""``vlafoundry run CHECKPOINT --env ENV --instruction TEXT [--seed S] [--gif OUT]``: talk to a trained policy.

Plays one episode in which the policy is told TEXT (the environment keeps its own mission, which decides success),
says which words the policy's tokenizer cannot represent, writes a GIF and prints a one-line outcome.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run", help="one episode with a free-text instruction: GIF and a one-line outcome",
        description="Play one episode with a free-text instruction given to a trained policy. Words its tokenizer "
        "cannot represent are reported; the environment's own mission decides success.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or run directory (uses latest)")
    p.add_argument("--env", default=None, help="environment (default: the one the policy was trained on)")
    p.add_argument("--instruction", required=True, help="what to tell the policy")
    p.add_argument("--seed", type=int, default=0, help="episode seed (default 0)")
    p.add_argument("--gif", default=None, metavar="OUT", help="GIF path (default: run.gif in the current folder)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="step cap (default: the env's own)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vlafoundry.envs import get_family
    from vlafoundry.eval.report import save_gif
    from vlafoundry.eval.talk import run_instruction, unknown_words
    from vlafoundry.train import load_run

    if args.max_steps is not None and args.max_steps < 1:
        print(f"error: --max-steps: expected an integer >= 1, got {args.max_steps}", file=sys.stderr)
        return 2
    if not args.instruction.strip():
        print(f"error: --instruction: expected non-empty text, got {args.instruction!r}", file=sys.stderr)
        return 2
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        print(f"error: CHECKPOINT: no such file or directory: {ckpt}", file=sys.stderr)
        return 2
    policy, cfg, _ = load_run(ckpt, device=args.device)
    env = args.env or getattr(getattr(cfg, "data", None), "env", None)
    if not env:
        print("error: --env: the checkpoint does not say which environment it was trained on; pass --env",
              file=sys.stderr)
        return 2
    env_kwargs = dict(get_family(env).env_kwargs(cfg.data))
    report = unknown_words(policy, args.instruction)
    print(report.message())
    ep = run_instruction(policy, env, args.instruction, seed=args.seed, env_kwargs=env_kwargs,
                         max_steps=args.max_steps)  # fmt: skip
    gif = Path(args.gif or "run.gif")
    if ep.frames:
        save_gif(ep.frames, gif)
        where = f"; GIF: {gif}"
    else:
        where = "; no GIF (this environment cannot render)"
    print(ep.outcome() + where)
    return 0
