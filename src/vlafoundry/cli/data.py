"""``vlafoundry data generate | inspect | verify | export``."""

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
            hold_out_pairs=args.hold_out_pairs,
            hold_out_scope=args.hold_out_scope,
            camera=args.camera,
            image_size=args.image_size,
            proprio=args.proprio,
            **({"env_cache": args.env_cache} if args.env_cache is not None else {}),
        )
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = result.metadata["counts"]
    print(
        f"wrote {counts['episodes']} episodes ({counts['steps']} steps, {counts['failed']} failed seeds skipped"
        + (f", {counts['held_out']} seeds skipped for a held-out pair" if counts.get("held_out") else "")
        + ") "
        f"to {result.root} in {result.wall_s:.1f}s"
        + (f" (resumed {result.shards_reused} finished shards)" if result.shards_reused else "")
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vlafoundry.data.lerobot import is_lerobot_dataset
    from vlafoundry.data.verify import inspect_dataset

    try:
        if is_lerobot_dataset(args.dir):
            from vlafoundry.data.lerobot_verify import inspect_lerobot

            print(inspect_lerobot(args.dir))
            return 0
        print(inspect_dataset(args.dir))
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: cannot inspect {args.dir}: {exc}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    from vlafoundry.data.lerobot import is_lerobot_dataset
    from vlafoundry.data.verify import verify_dataset

    if is_lerobot_dataset(args.dir):
        from vlafoundry.data.lerobot_verify import verify_lerobot

        problems = verify_lerobot(args.dir)
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        if problems:
            print(f"{args.dir}: {len(problems)} problem(s)", file=sys.stderr)
            return 1
        print(f"{args.dir}: OK (LeRobot v3.0 structure: info.json, tasks, episode ranges vs data rows, stats shapes, "
              "video frame counts)")
        return 0
    problems = verify_dataset(args.dir)
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"{args.dir}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.dir}: OK (checksums, sizes, Minari structure and training cache)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from vlafoundry.data.lerobot_export import export_dataset_lerobot

    if args.format != "lerobot":
        print(f"error: --format: expected 'lerobot', got {args.format!r}", file=sys.stderr)
        return 2
    try:
        info, note = export_dataset_lerobot(args.dir, args.out, fps=args.fps, images=not args.no_images,
                                            overwrite=args.overwrite, video_codec=args.video_codec, env_name=args.env)
    except (FileExistsError, FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if note:
        print(f"note: {note}")
    images = [k for k, f in info["features"].items() if f["dtype"] == "video" or k == "observation.grid"]
    print(f"wrote LeRobot {info['codebase_version']} dataset: {info['total_episodes']} episodes, "
          f"{info['total_frames']} frames, {info['total_tasks']} tasks, {info['fps']} fps"
          + (f", image feature {images[0]}" if images else "") + f" to {args.out}")
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
                     help="observation image mode the env family supports (BabyAI: symbolic or rgb; Meta-World: "
                          "symbolic = the 39-D state, rgb = camera frames; default symbolic)")
    gen.add_argument("--camera", default="corner2",
                     help="Meta-World --image rgb: camera name or comma list (corner2, corner, corner3, corner4, "
                          "topview, behindGripper, gripperPOV); K names give (K, H, W, 3) frames. Default corner2 "
                          "(LeRobot's MT50 protocol)")
    gen.add_argument("--image-size", type=int, default=64, help="Meta-World --image rgb: frame side in pixels "
                                                                "(default 64)")
    gen.add_argument("--proprio", default="auto", choices=("auto", "full", "hand"),
                     help="Meta-World state: full = the 39-D state, hand = hand xyz + gripper opening (LeRobot's "
                          "agent_pos); auto = hand with --image rgb, full otherwise")
    gen.add_argument("--max-steps", type=int, default=None, help="episode step cap (default: the env's)")
    gen.add_argument("--episode-timeout", type=float, default=10.0, help="cap on the expert's CPU time per episode, seconds (the wall-clock backstop is 30x, >= 60 s)")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    gen.add_argument("--env-cache", type=int, default=None, metavar="N",
                     help="envs each process keeps built, the least recently used closed first (0: one per task; "
                          "a Meta-World camera env holds ~100 MB). Default 16; the bytes do not depend on it")
    gen.add_argument("--action-noise", type=float, default=0.0, metavar="SIGMA",
                     help="DART: execute noisy actions, record the expert's clean ones. Continuous (Meta-World): "
                          "Gaussian noise of SIGMA x half the action range; discrete (BabyAI): a uniformly random "
                          "action with probability SIGMA. Default 0")
    gen.add_argument("--hold-out-pairs", default=None, metavar="PAIRS",
                     help="BabyAI: colour-object pairs no recorded mission may name, comma-separated, e.g. "
                          "'red ball,green key' (recorded in the metadata; evaluate on them with eval --generalisation)")
    gen.add_argument("--hold-out-scope", default="mission", choices=["mission", "scene"],
                     help="what the held-out pairs are kept out of: 'mission' (default), the recorded missions (the "
                          "objects still appear as distractors); 'scene', the episodes altogether (no recorded level "
                          "holds one either)")
    gen.set_defaults(handler=_generate)

    ins = sub.add_parser("inspect", help="print a dataset summary")
    ins.add_argument("dir", help="a vlafoundry, Minari or LeRobot v3.0 dataset directory")
    ins.set_defaults(handler=_inspect)

    exp = sub.add_parser("export", help="write a dataset in another format (LeRobot v3.0; see docs/interop.md)")
    exp.add_argument("dir", help="a vlafoundry, Minari or LeRobot dataset directory")
    exp.add_argument("--format", default="lerobot", help="output format: lerobot (LeRobot dataset v3.0)")
    exp.add_argument("--out", required=True, help="output directory (the LeRobot dataset root)")
    exp.add_argument("--fps", type=int, default=10, help="frames per second recorded in info.json and the videos "
                                                        "(BabyAI and Meta-World have no clock; default 10)")
    exp.add_argument("--no-images", action="store_true", help="leave images out (states, actions and tasks only)")
    exp.add_argument("--video-codec", default=None, help="PyAV encoder for RGB video (default libx264, near-lossless; "
                                                         "LeRobot's own default is libsvtav1)")
    exp.add_argument("--env", default=None, help="env name of a source that does not record one")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    exp.set_defaults(handler=_export)

    ver = sub.add_parser("verify", help="check checksums, sizes and structure")
    ver.add_argument("dir", help="a vlafoundry dataset directory (checksums, Minari structure, cache) or a LeRobot "
                                 "v3.0 one (structure, ranges, stats shapes, videos)")
    ver.set_defaults(handler=_verify)
