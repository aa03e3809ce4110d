"""``vlafoundry serve CHECKPOINT``: serve a trained policy over a websocket speaking msgpack (docs/serving.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a policy over websocket + msgpack (metadata on connect, /health, batching, API key)",
        description="Serve a checkpoint's policy to remote clients (vlafoundry.serving.client.PolicyClient, or "
        "`vlafoundry eval RUN --server ws://HOST:PORT`). Binds to 127.0.0.1 unless --host says otherwise. The API "
        "key comes from --api-key-env (an environment variable name), never from the command line.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or run directory (uses latest)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require the key in environment variable VAR (clients send Authorization: Bearer KEY)")
    p.add_argument("--device", default="cpu", help="torch device for the policy (default cpu)")
    p.add_argument("--batch-window-ms", type=float, default=2.0, metavar="MS",
                   help="how long a batch waits for other connected clients' requests (default 2)")
    p.add_argument("--max-message-mb", type=float, default=8.0, metavar="MB", help="largest request (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch / onnxruntime intra-op threads (default: "
                   "torch's)")  # fmt: skip
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="run the network in PyTorch (any policy) or in onnxruntime (vla policies with history 1 and "
                   "chunk 1, e.g. the quickstart's; several times faster per call on CPU)")  # fmt: skip
    p.add_argument("--onnx", default=None, metavar="FILE", help="with --backend onnx: a graph written by "
                   "`vlafoundry export` for this checkpoint (default: export and check one now)")  # fmt: skip
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from vlafoundry.serving.server import PolicyServer, ServerConfig
    from vlafoundry.train import load_run

    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ValueError(f"--api-key-env: expected environment variable {args.api_key_env} to hold the key, "
                             f"got it unset or empty")
    if args.host not in ("127.0.0.1", "localhost", "::1") and key is None:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach this port can use the "
              "policy")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    policy, cfg, _ = load_run(args.checkpoint, device=args.device)
    env = getattr(getattr(cfg, "data", None), "env", None)
    if args.backend == "onnx":
        policy = _onnx_policy(policy, env, args.onnx, args.threads)
    config = ServerConfig(host=args.host, port=args.port, api_key=key, batch_window_ms=args.batch_window_ms,
                          max_message_bytes=int(args.max_message_mb * 1024 * 1024))
    server = PolicyServer(policy, config, env=env)

    def ready(s: PolicyServer) -> None:
        print(f"serving {args.checkpoint} ({s.meta['policy_type']}, {env}, batching: {s.actor.mode}) on "
              f"ws://{args.host}:{s.port} (health: http://{args.host}:{s.port}/health)", flush=True)

    async def main() -> None:
        # SIGINT / SIGTERM stop the server gracefully, also where the shell started us with SIGINT ignored (a
        # background job of a non-interactive shell inherits SIG_IGN, and Python then raises no KeyboardInterrupt)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # platforms without loop signal handlers
                loop.add_signal_handler(sig, server.stop)
        await server.serve(on_ready=ready)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    print("stopped", flush=True)
    return 0


def _onnx_policy(policy: Any, env: str | None, path: str | None, threads: int | None) -> Any:
    import tempfile

    from vlafoundry.serving.onnx_export import (
        check_exportable,
        export_onnx,
        heldout_observations,
    )
    from vlafoundry.serving.onnx_runtime import OnnxPolicy

    check_exportable(policy)
    if path is None:
        path = str(Path(tempfile.mkdtemp(prefix="vlafoundry-serve-")) / "policy.onnx")
        report = export_onnx(policy, path, heldout_observations(policy, env or policy.spec.env, rows=8, steps=8))
        print(f"exported the acting path to {path}: max abs difference to PyTorch {report.max_abs_diff:.3g}")
    return OnnxPolicy(policy, path, threads=threads)


def _plain(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def evaluate_through_server(checkpoint: str, given: dict[str, Any], url: str, api_key_env: str | None,
                            label: Any) -> Any:
    """``vlafoundry eval CHECKPOINT --server URL``: the run's config (env, seeds, eval keys) from CHECKPOINT, the
    actions from the server (a :class:`~vlafoundry.serving.client.PolicyClient` standing in for the policy)."""
    from vlafoundry.eval.options import EvalError, EvalOptions
    from vlafoundry.eval.pipeline import run_evaluation
    from vlafoundry.serving.client import PolicyClient
    from vlafoundry.train import load_run

    for name in ("offline", "action_selection", "sample_temperature", "flow_steps", "diffusion_steps", "execute",
                 "ensemble", "instruction_snap", "device"):
        if given.get(name) is not None and given.get(name) is not False:
            raise EvalError(f"{label(name)}: not available with --server (the server owns the policy; start it "
                            f"with the settings you want), got {given[name]!r}")
    given = {k: v for k, v in given.items() if v is not None}
    given["offline"] = False  # the offline measures read the network itself
    EvalOptions.check(given, label)
    ckpt = Path(checkpoint)
    if not ckpt.exists():
        raise EvalError(f"CHECKPOINT: no such file or directory: {ckpt}")
    if not url.startswith(("ws://", "wss://")):
        raise EvalError(f"--server: expected ws://HOST:PORT or wss://HOST:PORT, got {url!r}")
    key = os.environ.get(api_key_env) if api_key_env else None
    _, cfg, _ = load_run(ckpt, device="cpu")
    options = EvalOptions.resolve(given, cfg, label)
    with PolicyClient(url, api_key=key) as client:
        print(f"acting through {url} ({client.metadata.get('policy_type')}, batching: "
              f"{client.metadata.get('batching')})")
        run = run_evaluation(client, cfg, options, checkpoint=ckpt, label=label)
        meta = client.metadata
    # say in eval.json where the actions came from (the pipeline sees only a client, not the policy's config)
    from vlafoundry.io import write_json_atomic

    run.payload["served_by"] = {"url": url, "policy_type": meta.get("policy_type"), "batching": meta.get("batching"),
                                "action_selection": meta.get("action_selection")}
    write_json_atomic(run.out / "eval.json", run.payload, default=_plain)
    return run
