"""A Python client of the policy server that stands in for a policy (``select_action``, ``reset``, ``stateless``).

    with PolicyClient("ws://127.0.0.1:8000", api_key=None) as policy:
        actions = policy.select_action({"image": ..., "instruction": [...]})   # (N,) | (N, A)
        policy.reset([3])                                                        # row 3's episode ended

So ``vlafoundry.eval.rollout.evaluate_policy(PolicyClient(url), ...)`` evaluates a served policy. Only the
observation keys the server lists in its metadata are sent (arrays in the dtypes it expects). If a reply carries a
chunk of actions per row (``"chunk": true``, actions (N, K, ...)), the client keeps a queue per row and answers
from it until a row's queue is empty.
"""

from __future__ import annotations

import itertools
from typing import Any, Self

import numpy as np

from vlafoundry.serving.codec import DEFAULT_MAX_MESSAGE_BYTES, decode, encode


class ServerError(RuntimeError):
    """The server answered a request with an error (its message names expected vs got)."""


_DTYPES = {"uint8": np.uint8, "float32": np.float32, "bool": np.bool_}


class PolicyClient:
    """A policy served at ``url`` (see the module docstring); ``timeout``: seconds per reply."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0,
                 max_message_bytes: int = 4 * DEFAULT_MAX_MESSAGE_BYTES) -> None:
        try:
            from websockets.sync.client import connect
        except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
            raise ModuleNotFoundError("PolicyClient needs websockets: pip install 'vla-foundry[serve]'",
                                      name=exc.name) from None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.url, self.timeout = url, timeout
        self._ws = connect(url, additional_headers=headers, max_size=max_message_bytes, compression=None,
                           open_timeout=timeout)
        self._ids = itertools.count(1)
        self.metadata: dict[str, Any] = decode(self._ws.recv(timeout), max_message_bytes)
        if self.metadata.get("type") != "metadata":
            raise ServerError(f"{url}: expected a metadata message on connect, got {self.metadata.get('type')!r}")
        self._queues: list[list[Any]] | None = None
        self.last_timing: dict[str, Any] = {}

    # ------------------------------------------------------------------ the policy contract
    @property
    def stateless(self) -> bool:
        return bool(self.metadata.get("stateless", True))

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        instr = [str(s) for s in observation["instruction"]]
        n = len(instr)
        if self._queues is not None and len(self._queues) == n and all(self._queues):
            return np.stack([q.pop(0) for q in self._queues])
        obs: dict[str, Any] = {"instruction": instr}
        for key, s in self.metadata["observation"].items():
            if key == "instruction" or key not in observation:
                continue
            obs[key] = np.ascontiguousarray(np.asarray(observation[key]), dtype=_DTYPES.get(s["dtype"]))
        reply = self.request({"type": "act", "observation": obs})
        self.last_timing = reply.get("timing", {})
        actions = np.asarray(reply["actions"])
        if reply.get("chunk"):  # (N, K, ...): queue the rest of each row's chunk
            self._queues = [list(actions[i, 1:]) for i in range(n)]
            actions = actions[:, 0]
        return np.array(actions)

    def reset(self, env_indices: Any = None) -> None:
        rows = None if env_indices is None else [int(i) for i in np.asarray(env_indices).reshape(-1)]
        if self._queues is not None:
            for i in rows if rows is not None else range(len(self._queues)):
                if i < len(self._queues):
                    self._queues[i] = []
        self.request({"type": "reset", "rows": rows})

    # ------------------------------------------------------------------ other messages
    def health(self) -> dict[str, Any]:
        return self.request({"type": "health"})

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message and return its reply (:class:`ServerError` if the reply is an error)."""
        mid = next(self._ids)
        self._ws.send(encode({**message, "id": mid}))
        reply = decode(self._ws.recv(self.timeout), 1 << 62)
        if reply.get("type") == "error":
            raise ServerError(f"{self.url}: {reply.get('error')}")
        if reply.get("id") != mid:
            raise ServerError(f"{self.url}: expected the reply to request {mid}, got {reply.get('id')}")
        return reply

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["PolicyClient", "ServerError"]
