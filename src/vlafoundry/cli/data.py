"""``vlafoundry data generate | inspect | verify``."""

from __future__ import annotations

import argparse
import sys


def _generate(args: argparse.Namespace) -> int:
    from vlafoundry.data.generate import generate_dataset

    try:
        result = generate_dataset(
            args.env,
            args.episodes,
            args.out,
            workers=args.workers,
            seed=args.seed,
            image=args.image,
            max_steps=args.max_steps,
            overwrite=args.overwrite,
            episode_timeout_s=args.episode_timeout,
            progress=not args.no_progress,
            action_noise=args.action_noise,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = result.metadata["counts"]
    print(
        f"wrote {counts['episodes']} episodes ({counts['steps']} steps, {counts['failed']} failed seeds skipped) "
        f"to {result.root} in {result.wall_s:.1f}s"
        + (f" (resumed {result.shards_reused} finished shards)" if result.shards_reused else "")
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vlafoundry.data.verify import inspect_dataset

    try:
        print(inspect_dataset(args.dir))
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: cannot inspect {args.dir}: {exc}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    from vlafoundry.data.verify import verify_dataset

    problems = verify_dataset(args.dir)
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"{args.dir}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.dir}: OK (checksums, sizes, Minari structure and training cache)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate, inspect and verify demonstration datasets")
    parser.set_defaults(handler=lambda args: (parser.print_help(), 0)[1])
    sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    gen = sub.add_parser("generate", help="record expert demonstrations into a Minari dataset")
    gen.add_argument("env", help="an env (babyai/<Level>, metaworld/<task>), a suite (metaworld/mt10), a comma-separated "
                                 "list of one family's names (metaworld/handle-press,metaworld/coffee-push) or a "
                                 "suite file (tasks.yaml / tasks.txt listing names; see docs/data.md)")
    gen.add_argument("--episodes", type=int, required=True, help="number of successful episodes to record")
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--workers", type=int, default=1, help="parallel processes (the bytes do not depend on it)")
    gen.add_argument("--seed", type=int, default=0, help="episode i uses seed SEED+i")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    gen.add_argument("--image", default="symbolic",
                     help="observation image mode the env family supports (BabyAI: symbolic or rgb; default symbolic)")
    gen.add_argument("--max-steps", type=int, default=None, help="episode step cap (default: the env's)")
    gen.add_argument("--episode-timeout", type=float, default=10.0, help="cap on the expert's CPU time per episode, seconds (the wall-clock backstop is 30x, >= 60 s)")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    gen.add_argument("--action-noise", type=float, default=0.0, metavar="SIGMA",
                     help="DART: execute noisy actions, record the expert's clean ones. Continuous (Meta-World): "
                          "Gaussian noise of SIGMA x half the action range; discrete (BabyAI): a uniformly random "
                          "action with probability SIGMA. Default 0")
    gen.set_defaults(handler=_generate)

    ins = sub.add_parser("inspect", help="print a dataset summary")
    ins.add_argument("dir")
    ins.set_defaults(handler=_inspect)

    ver = sub.add_parser("verify", help="check checksums, sizes and structure")
    ver.add_argument("dir")
    ver.set_defaults(handler=_verify)
