"""``vlafoundry eval CHECKPOINT``: closed-loop evaluation, robustness, paraphrases, offline metrics and the report.

A thin caller: arguments -> :class:`~vlafoundry.eval.options.EvalOptions` (command line > the checkpoint config's
``eval`` section > defaults) -> :func:`vlafoundry.eval.pipeline.evaluate_checkpoint` -> exit code. Writes
``eval.json``, ``report.md``, ``report.html`` and ``report_assets/`` into the run folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vlafoundry.eval.options import DEFAULT_BALANCE_SAMPLES, DEFAULT_EPISODES, DEFAULT_OFFLINE_SAMPLES


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint in closed loop and write eval.json + report",
        description="Closed-loop evaluation of a trained policy on vectorised environments, with optional "
        "missing-modality robustness, paraphrased instructions and GIFs; writes eval.json, report.md and a "
        "self-contained report.html into the run folder. Options not given come from the checkpoint config's "
        "eval section (eval.episodes, eval.workers, eval.seed_start, eval.max_steps), else the defaults below.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or run directory (uses latest)")
    p.add_argument("--env", default=None, help="environment or suite (default: the one the policy was trained on)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the config's "
                   f"eval.episodes, else {DEFAULT_EPISODES})")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, help="env worker processes (default: the config's "
                   "eval.workers, else CPU count, max 4; 0 = in-process)")  # fmt: skip
    p.add_argument("--num-envs", type=int, default=None, help="parallel env slots (default min(64, episodes))")
    p.add_argument("--seed-start", type=int, default=None, help="first evaluation seed (default: the config's "
                   "eval.seed_start, else 10**9; shifted past the training seeds if they overlap)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="episode step cap given to the envs "
                   "(default: the config's eval.max_steps; 0 = each env's own limit)")  # fmt: skip
    p.add_argument("--paraphrases", default=None, metavar="FILE", help="JSON paraphrase file (docs/evaluation.md); "
                   "adds a language-generalisation evaluation")  # fmt: skip
    p.add_argument("--robustness", action="store_true", default=None,
                   help="also evaluate with each modality removed / noised (and, for RGB policies, the image "
                   "occluded, colour-jittered, shifted and with Gaussian noise)")
    p.add_argument("--conditions", default=None, metavar="LIST",
                   help="robustness rows by name (implies --robustness), after the full-input row: a comma list, "
                   "each row one or more settings joined by '+': no_image, no_state, no_instruction, default (the "
                   "default rows) or key=value with key image_occlusion (area fraction), image_jitter (strength "
                   "< 1), image_shift (pixels), image_gaussian (σ / 255), image_noise, state_noise, "
                   "instruction_noise; e.g. \"image_occlusion=0.25,image_jitter=0.3\" (docs/evaluation.md)")
    p.add_argument("--generalisation", action="store_true", default=None,
                   help="also run the language generalisation suite: paraphrases (the family's shipped file, or "
                   "--paraphrases), held-out colour-object pairs (data.hold_out_pairs) and a held-out template, each "
                   "beside in-distribution success on the same seeds (docs/evaluation.md)")  # fmt: skip
    p.add_argument("--offline", action=argparse.BooleanOptionalAction, default=None,
                   help="offline metrics on the training data's held-out split: action accuracy/error, retrieval "
                   "recall@k, ITM accuracy, modality balance, accuracy per subgroup (default: on when the dataset "
                   "is available locally)")  # fmt: skip
    p.add_argument("--offline-samples", type=int, default=None, metavar="N",
                   help=f"about N held-out steps at most for offline metrics (default {DEFAULT_OFFLINE_SAMPLES}; whole "
                   "episodes for a memory policy)")  # fmt: skip
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=None,
                   help="modality balance (ablation and gradient shares) within the offline pass (default: on)")
    p.add_argument("--balance-samples", type=int, default=None, metavar="N",
                   help=f"about N held-out steps for modality balance, the first of the offline pass (default "
                   f"{DEFAULT_BALANCE_SAMPLES})")  # fmt: skip
    p.add_argument("--gifs", type=int, default=None, metavar="N",
                   help="GIFs of N successful and N failed episodes (default 2)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: the run folder)")
    p.add_argument("--device", default=None, help="torch device for the policy (default cpu)")
    p.add_argument("--action-selection", choices=["greedy", "sample"], default=None,
                   help="override how discrete actions are picked (default: the checkpoint's model.action_selection)")
    p.add_argument("--sample-temperature", type=float, default=None, metavar="T",
                   help="override the softmax temperature of sampled actions (> 0; < 1 sharpens; default: the "
                   "checkpoint's model.sample_temperature)")  # fmt: skip
    p.add_argument("--flow-steps", type=int, default=None, metavar="N",
                   help="a flow head's Euler integration steps for these rollouts (default: the checkpoint's "
                   "model.flow_steps)")  # fmt: skip
    p.add_argument("--diffusion-steps", type=int, default=None, metavar="N",
                   help="a diffusion head's DDIM denoising steps for these rollouts (default: the checkpoint's "
                   "model.diffusion_steps)")  # fmt: skip
    p.add_argument("--execute", type=int, default=None, metavar="N",
                   help="actions acted on per predicted chunk before re-planning, 0 = the whole chunk (default: the "
                   "checkpoint's model.execute)")  # fmt: skip
    p.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=None,
                   help="temporal ensembling of overlapping chunks, as ACT (default: the checkpoint's model.ensemble)")
    p.add_argument("--instruction-snap", action=argparse.BooleanOptionalAction,
                   default=None, help="replace each instruction that is not a training instruction by the nearest "
                   "training instruction in the pretrained encoder's sentence space (model.language pretrained; "
                   "default: the checkpoint's model.instruction_snap)")  # fmt: skip
    p.add_argument("--server", default=None, metavar="URL", help="act through a policy server (ws://HOST:PORT, "
                   "`vlafoundry serve`) instead of loading the policy here; same seeds and results as in-process; "
                   "offline metrics and pictures that read the network are skipped")  # fmt: skip
    p.add_argument("--api-key-env", default=None, metavar="VAR", help="with --server: the API key is in this "
                   "environment variable")  # fmt: skip
    p.set_defaults(handler=run_eval)


OPTION_NAMES = ("env", "episodes", "workers", "num_envs", "seed_start", "max_steps", "paraphrases", "robustness",
                "conditions", "generalisation",
                "offline", "offline_samples", "balance", "balance_samples", "gifs", "out", "device",
                "action_selection", "sample_temperature", "flow_steps", "diffusion_steps", "execute",
                "ensemble", "instruction_snap")  # fmt: skip


def flag(name: str) -> str:
    """Option name -> its command-line flag (``num_envs`` -> ``--num-envs``)."""
    return "--" + name.replace("_", "-")


def run_eval(args: argparse.Namespace) -> int:
    from vlafoundry.eval.options import EvalError
    from vlafoundry.eval.pipeline import evaluate_checkpoint

    given = {name: getattr(args, name, None) for name in OPTION_NAMES}
    try:
        if getattr(args, "server", None):
            from vlafoundry.cli.serve import evaluate_through_server

            evaluate_through_server(args.checkpoint, given, args.server, args.api_key_env, label=flag)
        else:
            evaluate_checkpoint(args.checkpoint, given, label=flag)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
