"""The policy server: per-client state under batching, reset, auth, health, and hostile messages."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from serving_helpers import make_policy, observation  # tests/serving/serving_helpers.py

pytest.importorskip("msgpack", reason="serving tests need the serve extra (msgpack)")
pytest.importorskip("websockets", reason="serving tests need the serve extra (websockets)")


def _client(srv, **kw):
    from vlafoundry.serving.client import PolicyClient

    return PolicyClient(srv.url, timeout=20, **kw)


def test_metadata_on_connect_and_one_client_matches_in_process(served):
    srv = served(make_policy())
    ref = make_policy()
    rng = np.random.default_rng(0)
    with _client(srv) as c:
        m = c.metadata
        assert m["observation"]["image"] == {"shape": [7, 7, 3], "dtype": "uint8"}
        assert m["action"]["num_actions"] == 7 and m["policy_type"] == "vla" and m["env"] == "babyai/GoToLocal"
        assert m["memory"] == "gru" and m["stateless"] is False and m["batching"] == "rows" and m["chunk"] == 1
        c.reset()
        ref.reset()
        for step in range(6):  # sampled actions, GRU memory, a partial reset: identical to in-process
            o = observation(4, rng)
            np.testing.assert_array_equal(c.select_action(o), ref.select_action(o))
            if step == 2:
                c.reset([1, 3])
                ref.reset([1, 3])


def test_concurrent_clients_keep_their_own_memory(served):
    """Greedy GRU policy: 4 clients acting at once (stacked into shared batches) each get exactly what a private
    in-process policy gives on their own observation stream, including after a per-client reset."""
    srv = served(make_policy(action_selection="greedy"), batch_window_ms=20)
    streams = [[observation(2, np.random.default_rng(k * 100 + t)) for t in range(8)] for k in range(4)]
    expected = []
    for s in streams:
        ref = make_policy(action_selection="greedy")
        ref.reset()
        out = []
        for t, o in enumerate(s):
            out.append(ref.select_action(o))
            if t == 4:
                ref.reset([0])
        expected.append(out)
    got: list[list[np.ndarray]] = [[] for _ in streams]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(streams))

    def run(k: int) -> None:
        try:
            with _client(srv) as c:
                c.reset()
                for t, o in enumerate(streams[k]):
                    barrier.wait(10)
                    got[k].append(c.select_action(o))
                    if t == 4:
                        c.reset([0])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for k in range(len(streams)):
        for t in range(len(streams[k])):
            np.testing.assert_array_equal(got[k][t], expected[k][t], err_msg=f"client {k} step {t}")
    with _client(srv) as c:
        assert c.health()["batches"] < 4 * 8  # some requests were stacked


def test_stateless_policy_batches_and_matches(served):
    pol = make_policy(memory=None, action_selection="greedy")
    srv = served(pol)
    ref = make_policy(memory=None, action_selection="greedy")
    rng = np.random.default_rng(1)
    with _client(srv) as c:
        assert c.stateless
        o = observation(5, rng)
        np.testing.assert_array_equal(c.select_action(o), ref.select_action(o))


def test_health_endpoint_and_api_key(served):
    from vlafoundry.serving.client import PolicyClient

    srv = served(make_policy(), api_key="s3cret")
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/health", timeout=10) as r:
        assert r.status == 200 and r.read() == b"ok\n"
    with pytest.raises(Exception, match="401"):
        PolicyClient(srv.url, timeout=10)
    with pytest.raises(Exception, match="401"):
        PolicyClient(srv.url, api_key="wrong", timeout=10)
    with _client(srv, api_key="s3cret") as c:
        assert c.health()["status"] == "ok"


def test_binds_loopback_by_default():
    from vlafoundry.serving.server import ServerConfig

    assert ServerConfig().host == "127.0.0.1"


def _raw(srv):
    from websockets.sync.client import connect

    ws = connect(srv.url, open_timeout=10, compression=None, max_size=None)
    ws.recv(10)  # metadata
    return ws


def test_hostile_messages_get_errors_and_others_are_served(served):
    from vlafoundry.serving.codec import decode, encode

    srv = served(make_policy(), max_message_bytes=64 * 1024)
    rng = np.random.default_rng(2)
    good = _client(srv)
    good.reset()
    good.select_action(observation(2, rng))
    bad = _raw(srv)
    img = observation(1, rng)["image"]
    cases = {
        b"\xc1\xff\x00garbage": "expected msgpack",
        encode({"type": "fly"}): "type: expected one of",
        encode({"type": "act"}): "observation: expected a map",
        encode({"type": "act", "observation": {"instruction": ["go"], "image": img[:, :5]}}): "expected shape (1, 7, 7, 3)",
        encode({"type": "act", "observation": {"instruction": ["go"], "image": img.astype(np.float32),
                                               "state": np.zeros((1, 4), np.float32)}}): "expected dtype uint8",
        encode({"type": "act", "observation": {"instruction": ["go"], "image": img,
                                               "state": np.full((1, 4), np.nan, np.float32)}}): "finite",
        encode({"type": "act", "observation": {"instruction": ["go"], "image": img, "state": np.zeros((1, 4)),
                                               "pickle": b"x"}}): "unexpected keys",
        encode({"type": "act", "observation": {"instruction": ["go"] * 2000}}): "expected 1 to 1024 rows",
        encode({"type": "act", "observation": {"instruction": ["go"], "image": {"__ndarray__": True, "dtype": "|O",
                "shape": [1], "data": b"x"}}}): "array dtype",  # object arrays (pickle) are never decoded
        encode({"type": "act", "observation": {"instruction": ["go"], "image": {"__ndarray__": True, "dtype": "|u1",
                "shape": [1, 7, 7, 3], "data": b"xx"}}}): "expected 147 bytes",
        encode({"type": "reset", "rows": ["a"]}): "rows: expected null or a list of ints",
        encode([1, 2, 3]): "expected a map",
        b"\x00" * (100 * 1024): "expected at most 65536 bytes",
        "a text frame": "binary frame",
    }
    for payload, message in cases.items():
        bad.send(payload)
        reply = decode(bad.recv(10), 1 << 30)
        assert reply["type"] == "error" and message in reply["error"], (payload[:40], reply)
        np.testing.assert_equal(good.select_action(observation(2, rng)).shape, (2,))  # still served
    bad.close()


def test_client_vanishing_mid_request_does_not_stop_the_server(served):
    from vlafoundry.serving.codec import encode

    srv = served(make_policy())
    rng = np.random.default_rng(3)
    for _ in range(3):
        ws = _raw(srv)
        ws.send(encode({"type": "act", "id": 1, "observation": observation(64, rng)}))
        ws.close()  # gone before the reply
    with _client(srv) as c:
        c.reset()
        assert c.select_action(observation(3, rng)).shape == (3,)
        assert c.health()["clients"] == 1


def test_error_replies_raise_in_the_client(served):
    from vlafoundry.serving.client import ServerError

    srv = served(make_policy())
    with _client(srv) as c, pytest.raises(ServerError, match="instruction"):
        c.request({"type": "act", "observation": {"instruction": "not a list"}})


def test_codec_round_trip_and_refusals():
    from vlafoundry.serving.codec import CodecError, decode, encode

    msg = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.ones(3, np.float32), "c": np.array([True]),
           "s": ["x"], "n": None}
    out = decode(encode(msg))
    for k in ("a", "b", "c"):
        assert out[k].dtype == msg[k].dtype
        np.testing.assert_array_equal(out[k], msg[k])
    with pytest.raises(CodecError, match="array dtype"):
        encode({"o": np.array([object()], dtype=object)})
    with pytest.raises(CodecError, match="elements"):
        decode(encode({"x": {"__ndarray__": True, "dtype": "|u1", "shape": [10**6, 10**6], "data": b""}}))


def test_oversized_frame_closes_only_that_connection(served):
    from vlafoundry.serving.codec import decode

    srv = served(make_policy(), max_message_bytes=16 * 1024)
    rng = np.random.default_rng(4)
    good = _client(srv)
    good.reset()
    bad = _raw(srv)
    bad.send(b"\x00" * (1024 * 1024))  # over 4x the limit: refused by the websocket layer (close 1009)
    with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed* (its exact class depends on timing)
        decode(bad.recv(10))
    assert good.select_action(observation(2, rng)).shape == (2,)


def test_reset_rows_are_checked_against_the_clients_rows(served):
    from vlafoundry.serving.client import ServerError

    srv = served(make_policy())
    with _client(srv) as c:
        c.reset()
        c.select_action(observation(2, np.random.default_rng(5)))
        with pytest.raises(ServerError, match=r"rows: expected ints in \[0, 2\) \(this client's rows\), got \[5\]"):
            c.reset([5])
        c.reset([1])


class _CountingPolicy:
    """A stateful policy type without an ActingState: the action of a row is how many steps it has acted since its
    last reset (so any mixing of clients' state shows)."""

    type = "counting"

    def __init__(self, stateless: bool = False) -> None:
        from vlafoundry.models.processor import PolicyProcessor
        from vlafoundry.models.spec import PolicySpec

        self.spec = PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7,
                               state_dim=4, state_mean=[0.0] * 4, state_std=[1.0] * 4)
        self.processor = PolicyProcessor(self.spec, state=True)
        self.stateless = stateless
        self.count: np.ndarray | None = None

    def eval(self):
        return self

    def select_action(self, obs):
        n = self.processor.check_observation(obs)
        if self.stateless:
            return np.asarray(obs["state"])[:, 0].astype(np.int64)  # a function of the row's observation only
        if self.count is None or len(self.count) != n:
            self.count = np.zeros(n, dtype=np.int64)
        self.count += 1
        return self.count.copy()

    def reset(self, env_indices=None):
        if env_indices is None or self.count is None:
            self.count = None
        else:
            self.count[np.asarray(env_indices)] = 0


@pytest.mark.parametrize("stateless", [False, True])
def test_other_policy_types_copy_or_stack(served, stateless):
    srv = served(_CountingPolicy(stateless), batch_window_ms=20)
    results: dict[int, list[np.ndarray]] = {}

    def run(k: int) -> None:
        with _client(srv) as c:
            c.reset()
            out = []
            for t in range(5):
                state = np.full((k + 1, 4), float(k), np.float32)
                out.append(c.select_action({"state": state, "instruction": ["go"] * (k + 1)}))
                if t == 2:
                    c.reset([0])
            results[k] = out

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with _client(srv) as c:
        assert c.metadata["batching"] == ("stateless" if stateless else "copy")
    for k in range(3):
        if stateless:
            assert all((a == k).all() and a.shape == (k + 1,) for a in results[k])
        else:  # each client's own counters: 1, 2, 3, then row 0 reset -> 1, 2
            assert [int(a[0]) for a in results[k]] == [1, 2, 3, 1, 2]
            assert [int(a[-1]) for a in results[k]] == ([1, 2, 3, 1, 2] if k == 0 else [1, 2, 3, 4, 5])
