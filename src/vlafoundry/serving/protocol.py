"""Message types of the policy server and the checks an observation passes before it reaches the policy.

Client -> server (msgpack maps, :mod:`vlafoundry.serving.codec`), each with an optional integer ``id`` echoed back:

* ``{"type": "act", "observation": {...}}`` -> ``{"type": "action", "actions": array (N, ...), "timing": {...}}``
* ``{"type": "reset", "rows": null | [int, ...]}`` -> ``{"type": "reset_ok"}`` (rows of this client only)
* ``{"type": "health"}`` -> ``{"type": "health", "status": "ok", "clients": n, "served": n, "uptime_s": s}``
* ``{"type": "metadata"}`` -> the metadata map sent on connect again.

Any bad message gets ``{"type": "error", "error": "...expected ..., got ..."}`` and the connection stays open.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
MESSAGE_TYPES: tuple[str, ...] = ("act", "reset", "health", "metadata")
PRESENT_KEYS: tuple[str, ...] = ("image_present", "instruction_present", "state_present")
MAX_INSTRUCTION_CHARS = 1000


class ProtocolError(ValueError):
    """A well-formed message that asks for something invalid (unknown type, wrong key, shape or dtype)."""


def observation_spec(policy: Any) -> dict[str, dict[str, Any]]:
    """Per observation key: shape without the row axis and dtype the server accepts."""
    spec = policy.spec
    proc = policy.processor
    out: dict[str, dict[str, Any]] = {"instruction": {"shape": [], "dtype": "str"}}
    if proc.image:
        out["image"] = {"shape": list(spec.image_shape), "dtype": "uint8"}
    if proc.state:
        out["state"] = {"shape": [int(spec.state_dim)], "dtype": "float32"}
    for k in PRESENT_KEYS:
        out[k] = {"shape": [], "dtype": "bool", "optional": True}
    return out


def metadata(policy: Any, *, env: str | None, max_rows: int, max_message_bytes: int) -> dict[str, Any]:
    """The map sent to every client on connect."""
    spec = policy.spec
    cfg = getattr(policy, "cfg", None)
    action = {"type": spec.action_type, "dim": int(spec.action_dim), "num_actions": spec.num_actions,
              "low": spec.action_low, "high": spec.action_high,
              "dtype": "int64" if spec.action_type == "discrete" else "float32"}
    return {
        "type": "metadata",
        "protocol": PROTOCOL_VERSION,
        "policy_type": getattr(policy, "type", type(policy).__name__),
        "env": env or spec.env,
        "tasks": list(spec.tasks),
        "observation": observation_spec(policy),
        "action": action,
        "chunk": int(getattr(cfg, "chunk", 1) or 1),
        "history": int(getattr(cfg, "history", 1) or 1),
        "memory": getattr(cfg, "memory", None),
        "stateless": bool(getattr(policy, "stateless", True)),
        "action_selection": getattr(cfg, "action_selection", None),
        "returns": "one action per row per act (chunks are queued per row on the server)",
        "max_rows": max_rows,
        "max_message_bytes": max_message_bytes,
        "message_types": list(MESSAGE_TYPES),
    }


def check_observation(obs: Any, spec: dict[str, dict[str, Any]], max_rows: int) -> dict[str, Any]:
    """Validate a decoded observation against ``spec`` (:func:`observation_spec`) -> the policy's observation dict
    (arrays copied to writable, dtypes as the policy reads them). Raises :class:`ProtocolError` naming the key."""
    if not isinstance(obs, dict):
        raise ProtocolError(f"observation: expected a map, got {type(obs).__name__}")
    unknown = sorted(str(k) for k in obs if k not in spec and k != "task")
    if unknown:
        raise ProtocolError(f"observation: unexpected keys {unknown}; expected keys from {sorted(spec)}")
    instr = obs.get("instruction")
    if not isinstance(instr, list) or not all(isinstance(s, str) for s in instr):
        raise ProtocolError(f"instruction: expected a list of N strings, got {type(instr).__name__}")
    n = len(instr)
    if not 1 <= n <= max_rows:
        raise ProtocolError(f"instruction: expected 1 to {max_rows} rows, got {n}")
    if any(len(s) > MAX_INSTRUCTION_CHARS for s in instr):
        raise ProtocolError(f"instruction: expected at most {MAX_INSTRUCTION_CHARS} characters per string")
    out: dict[str, Any] = {"instruction": instr}
    for key, s in spec.items():
        if key == "instruction":
            continue
        if key not in obs:
            if s.get("optional"):
                continue
            raise ProtocolError(f"observation: expected key {key!r} (shape (N, {', '.join(map(str, s['shape']))}),"
                                f" {s['dtype']})")
        v = obs[key]
        if not isinstance(v, np.ndarray):
            raise ProtocolError(f"{key}: expected an array, got {type(v).__name__}")
        want = (n, *s["shape"])
        if tuple(v.shape) != want:
            raise ProtocolError(f"{key}: expected shape {want}, got {tuple(v.shape)}")
        if s["dtype"] == "uint8" and v.dtype != np.uint8:
            raise ProtocolError(f"{key}: expected dtype uint8, got {v.dtype}")
        if s["dtype"] == "bool" and v.dtype not in (np.bool_, np.uint8):
            raise ProtocolError(f"{key}: expected dtype bool, got {v.dtype}")
        if s["dtype"] == "float32":
            if v.dtype.kind != "f":
                raise ProtocolError(f"{key}: expected a float dtype (float32), got {v.dtype}")
            v = v.astype(np.float32)
            if not np.isfinite(v).all():
                raise ProtocolError(f"{key}: expected finite values, got NaN or inf")
        out[key] = v.astype(bool) if s["dtype"] == "bool" else np.array(v)
    return out


def check_rows(rows: Any, n: int | None) -> list[int] | None:
    """``reset`` rows: None (all) or a list of ints in ``[0, n)`` (``n``: rows of this client's last act)."""
    if rows is None:
        return None
    if not isinstance(rows, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
        raise ProtocolError(f"rows: expected null or a list of ints, got {type(rows).__name__}")
    if n is not None and any(not 0 <= r < n for r in rows):
        raise ProtocolError(f"rows: expected ints in [0, {n}) (this client's rows), got {rows[:8]}")
    return rows


__all__ = ["MESSAGE_TYPES", "PROTOCOL_VERSION", "ProtocolError", "check_observation", "check_rows", "metadata",
           "observation_spec"]
