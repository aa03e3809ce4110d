"""The policy server: one policy behind a websocket speaking msgpack (``vlafoundry serve``).

* On connect (after the optional API key check) the server sends the metadata map (:func:`protocol.metadata`).
* ``act`` requests of all clients go through one queue; a batcher takes every request waiting (and, while some
  connected client has nothing pending, waits up to ``batch_window_ms`` for more) and runs them as one group on a
  single inference thread (:class:`~vlafoundry.serving.state.Actor`: per-client acting state, stacked calls).
* ``GET /health`` on the same port answers ``200 ok`` (no key needed: it reveals nothing); the ``health`` message
  answers with counters.
* Every bad message gets an ``error`` reply naming expected vs got; the connection and all others go on. Messages
  over ``max_message_bytes`` get an error reply; frames over 4x that are refused by the websocket layer (close
  code 1009) before they are buffered whole.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np

from vlafoundry.serving.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    CodecError,
    decode,
    encode,
)
from vlafoundry.serving.protocol import (
    MESSAGE_TYPES,
    ProtocolError,
    check_observation,
    check_rows,
    metadata,
    observation_spec,
)
from vlafoundry.serving.state import Actor, Session

API_KEY_HEADER = "Authorization"  # "Bearer <key>" (also accepted: "X-API-Key: <key>")


@dataclass
class ServerConfig:
    """How the server listens and batches (defaults: loopback only, no key)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_rows: int = 1024  # rows in one act request
    max_batch_rows: int = 4096  # rows stacked into one select_action call
    batch_window_ms: float = 2.0


def _require_websockets() -> Any:
    try:
        import websockets.asyncio.server as ws_server
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("vlafoundry serve needs websockets: pip install 'vla-foundry[serve]'",
                                  name=exc.name) from None
    return ws_server


def _key_of(headers: Any) -> str | None:
    auth = headers.get(API_KEY_HEADER)
    if auth and auth.startswith("Bearer "):
        return auth[len("Bearer "):]
    return headers.get("X-API-Key")


class PolicyServer:
    """Serve ``policy`` (a loaded :class:`~vlafoundry.models.base.Policy`, in eval mode) to websocket clients."""

    def __init__(self, policy: Any, config: ServerConfig | None = None, env: str | None = None) -> None:
        self.policy, self.config = policy.eval(), config or ServerConfig()
        self.actor = Actor(policy)
        self.spec = observation_spec(policy)
        c = self.config
        self.meta = metadata(policy, env=env, max_rows=c.max_rows, max_message_bytes=c.max_message_bytes)
        self.meta["batching"] = self.actor.mode
        self.clients = 0
        self.served = 0
        self.batches = 0
        self.started = time.monotonic()
        self.port: int | None = None
        self._queue: asyncio.Queue[tuple[Session, dict[str, Any], asyncio.Future[Any]]] | None = None
        self._pending = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlafoundry-infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ HTTP side (health, key check)
    def _process_request(self, connection: Any, request: Any) -> Any:
        if request.path.split("?")[0] in ("/health", "/healthz"):
            return connection.respond(HTTPStatus.OK, "ok\n")
        key = self.config.api_key
        if key is not None:
            got = _key_of(request.headers)
            if got is None or not hmac.compare_digest(got.encode(), key.encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "expected a valid API key (Authorization: "
                                                                   "Bearer KEY or X-API-Key: KEY)\n")
        return None

    # ------------------------------------------------------------------ one connection
    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        session = self.actor.new_session()
        self.clients += 1
        try:
            await ws.send(encode(self.meta))
            async for raw in ws:
                reply = await self._answer(session, raw, loop)
                await ws.send(encode(reply))
        except ConnectionClosed:
            pass  # a client vanishing (even mid-request) only ends its own session
        finally:
            self.clients -= 1

    async def _answer(self, session: Session, raw: Any, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        mid = None
        try:
            msg = decode(raw, self.config.max_message_bytes)
            mid = msg.get("id")
            if mid is not None and (not isinstance(mid, int) or isinstance(mid, bool)):
                mid = None
                raise ProtocolError("id: expected an integer or absent")
            kind = msg.get("type")
            if kind == "act":
                t0 = time.perf_counter()
                obs = check_observation(msg.get("observation"), self.spec, self.config.max_rows)
                fut: asyncio.Future[Any] = loop.create_future()
                self._pending += 1
                await self._queue.put((session, obs, fut))
                actions, batch_rows, batch_clients = await fut
                return {"type": "action", "id": mid, "actions": actions,
                        "timing": {"server_ms": (time.perf_counter() - t0) * 1e3, "batch_rows": batch_rows,
                                   "batch_clients": batch_clients}}
            if kind == "reset":
                rows = check_rows(msg.get("rows"), session.rows)
                await loop.run_in_executor(self._pool, self.actor.reset, session, rows)
                return {"type": "reset_ok", "id": mid}
            if kind == "health":
                return {"type": "health", "id": mid, "status": "ok", "clients": self.clients, "served": self.served,
                        "batches": self.batches, "uptime_s": time.monotonic() - self.started}
            if kind == "metadata":
                return {**self.meta, "id": mid}
            raise ProtocolError(f"type: expected one of {list(MESSAGE_TYPES)}, got {str(kind)[:40]!r}")
        except (CodecError, ProtocolError) as exc:
            return {"type": "error", "id": mid, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the policy refused this request; others go on
            return {"type": "error", "id": mid, "error": f"{type(exc).__name__}: {exc}"[:2000]}

    # ------------------------------------------------------------------ the batcher
    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        window = self.config.batch_window_ms / 1e3
        while True:
            items = [await self._queue.get()]
            rows = len(items[0][1]["instruction"])
            deadline = loop.time() + window
            while rows < self.config.max_batch_rows:
                if not self._queue.empty():
                    item = self._queue.get_nowait()
                elif len(items) < self.clients and window > 0 and loop.time() < deadline:
                    try:  # some connected client has nothing pending yet: give it the window
                        item = await asyncio.wait_for(self._queue.get(), deadline - loop.time())
                    except TimeoutError:
                        break
                else:
                    break
                items.append(item)
                rows += len(item[1]["instruction"])
            self._pending -= len(items)
            try:
                results = await loop.run_in_executor(self._pool, self.actor.act, [(s, o) for s, o, _ in items])
            except Exception as exc:  # noqa: BLE001 - never let the batcher die
                results = [exc] * len(items)
            self.batches += 1
            for (_, obs, fut), r in zip(items, results, strict=True):
                if fut.done():
                    continue
                if isinstance(r, Exception):
                    fut.set_exception(r)
                else:
                    self.served += len(obs["instruction"])
                    fut.set_result((np.asarray(r), rows, len(items)))

    # ------------------------------------------------------------------ running
    async def serve(self, on_ready: Any = None) -> None:
        """Serve until :meth:`stop` (or the task is cancelled)."""
        ws_server = _require_websockets()
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._stop = asyncio.Event()
        batcher = asyncio.create_task(self._batcher())
        c = self.config
        try:
            async with ws_server.serve(self._handler, c.host, c.port, process_request=self._process_request,
                                       max_size=4 * c.max_message_bytes, compression=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                if on_ready is not None:
                    on_ready(self)
                self._ready.set()
                await self._stop.wait()
        finally:
            batcher.cancel()

    def start_background(self) -> PolicyServer:
        """Serve from a daemon thread (tests, benchmarks); returns once listening (``self.port`` set)."""
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self.serve())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                errors.append(exc)
                self._ready.set()

        self._thread = threading.Thread(target=run, name="vlafoundry-serve", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=False)

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"


__all__ = ["API_KEY_HEADER", "PolicyServer", "ServerConfig"]
