"""``vlafoundry export CHECKPOINT --onnx OUT``: the acting path as an ONNX graph, checked with onnxruntime."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a policy's acting path to ONNX (checked against PyTorch with onnxruntime)",
        description="Export one acting step (state standardisation included; token ids and, with a memory, the GRU "
        "state as explicit inputs/outputs) to ONNX, write OUT's sidecar JSON (inputs, tokenizer, statistics), and "
        "check it against the PyTorch policy on held-out observations (evaluation seeds), printing the max abs "
        "difference. See docs/serving.md.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or run directory (uses latest)")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--check-rows", type=int, default=16, metavar="N", help="held-out episodes checked (default 16)")
    p.add_argument("--check-steps", type=int, default=12, metavar="N", help="steps of each (default 12)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted abs difference (default 1e-4)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from vlafoundry.serving.onnx_export import (
        check_exportable,
        export_onnx,
        heldout_observations,
    )
    from vlafoundry.train import load_run

    policy, cfg, _ = load_run(args.checkpoint, device="cpu")
    check_exportable(policy)  # refuse before any work, naming why
    env = getattr(getattr(cfg, "data", None), "env", None) or policy.spec.env
    obs = heldout_observations(policy, env, rows=args.check_rows, steps=args.check_steps)
    report = export_onnx(policy, args.onnx, obs, opset=args.opset)
    agree = "" if report.action_agreement is None else f", argmax actions agree on {report.action_agreement:.1%} of rows"
    print(f"wrote {report.path} and {report.sidecar}\ninputs: {', '.join(report.inputs)}\noutputs: "
          f"{', '.join(report.outputs)}\nchecked against PyTorch with onnxruntime on {report.checked_steps} steps x "
          f"{args.check_rows} held-out episodes of {env}: max abs difference {report.max_abs_diff:.3g}{agree}")
    if report.max_abs_diff > args.tolerance:
        raise RuntimeError(f"onnx check: expected max abs difference <= {args.tolerance:g}, got "
                           f"{report.max_abs_diff:.3g} (the file is written; do not deploy it)")
    return 0
