"""Decoding of input entries into rows or typed errors, and result encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worker.protocol import (
    Fixed,
    Limits,
    batch_tail,
    dead_letter_fields,
    decode_entry,
    discrete,
    encode_state,
    error_fields,
    ok_values,
    parse_result,
)
from worker.publish import PUBLISH_LUA, Batch

LIMITS = Limits(
    max_field_bytes=4096,
    default_stream="statpair:actions",
    reply_prefix="statpair:actions:",
    default_ttl_ms=0,
)
NOW = 1_700_000_000_000.0
EID = b"1700000000000-0"
STATE = [0.1 * i for i in range(28)]


def dec(fields: dict[bytes, bytes], state_dim: int | None = 28, now: float = NOW, limits: Limits = LIMITS):
    return decode_entry(EID, fields, None if state_dim is None else Fixed(state_dim), now, limits)


def test_json_state() -> None:
    r = dec({b"state": json.dumps(STATE).encode(), b"id": b"abc", b"pair": b"KO/PEP"})
    assert r.error is None and r.id == "abc" and r.pair == "KO/PEP"
    assert r.reply_to == "statpair:actions" and r.entry_id == EID.decode()
    assert r.row.dtype == np.float32 and np.allclose(r.row, STATE)


def test_f32_state_and_default_id() -> None:
    r = dec(encode_state(STATE) | {})  # type: ignore[operator]
    r = dec({b"state_f32": np.asarray(STATE, "<f4").tobytes()})
    assert r.error is None and r.id == EID.decode()
    assert np.array_equal(r.row, np.asarray(STATE, np.float32))


def test_integers_are_numbers() -> None:
    assert dec({b"state": json.dumps(list(range(28))).encode()}).error is None


@pytest.mark.parametrize(
    "fields, detail",
    [
        ({}, "no 'state'"),
        ({b"state": b"[1]", b"state_f32": b"\0\0\0\0"}, "both 'state' and 'state_f32'"),
        ({b"state": b"[1, 2"}, "not valid JSON"),
        ({b"state": b'{"a": 1}'}, "JSON dict, not an array"),
        ({b"state": json.dumps(STATE[:27]).encode()}, "state has 27 values, the model expects 28"),
        ({b"state": json.dumps([*STATE, 1.0]).encode()}, "state has 29 values, the model expects 28"),
        ({b"state": json.dumps([*STATE[:27], "x"]).encode()}, 'state[27] is "x", not a number'),
        ({b"state": json.dumps([*STATE[:27], True]).encode()}, "state[27] is true, not a number"),
        ({b"state": json.dumps([*STATE[:27], None]).encode()}, "state[27] is null, not a number"),
        ({b"state": (json.dumps(STATE[:27])[:-1] + ", NaN]").encode()}, "state[27] is nan"),
        ({b"state": (json.dumps(STATE[:26])[:-1] + ", Infinity, 1]").encode()}, "state[26] is inf"),
        ({b"state": json.dumps([*STATE[:27], 1e300]).encode()}, "state[27] is 1e+300, beyond float32"),
        ({b"state": ("[" + "1, " * 27 + "1" + "0" * 400 + "]").encode()}, "integer too large"),
        ({b"state_f32": b"\0\0\0"}, "not a whole number of float32"),
        ({b"state_f32": np.zeros(27, "<f4").tobytes()}, "state has 27 values, the model expects 28"),
        ({b"state_f32": np.full(28, np.nan, "<f4").tobytes()}, "state[0] is nan"),
        ({b"state": json.dumps(STATE).encode(), b"id": "é".encode() * 129}, "id has 129 characters"),
        ({b"state": json.dumps(STATE).encode(), b"id": b"\xff\xfe"}, "id is not valid UTF-8"),
        ({b"state": json.dumps(STATE).encode(), b"pair": b"P" * 65}, "pair has 65 characters"),
        ({b"state": json.dumps(STATE).encode(), b"ttl_ms": b"soon"}, "not a whole number"),
        ({b"state": json.dumps(STATE).encode(), b"ttl_ms": b"-5"}, "ttl_ms -5 is negative"),
        ({b"state": json.dumps(STATE).encode(), b"ttl_ms": b"abc"}, "ttl_ms 'abc' is not a whole"),
        ({b"state": json.dumps(STATE).encode(), b"contract": b"zzz"}, "'zzz' is not a contract id"),
        ({b"state": json.dumps(STATE).encode(), b"contract": b"8F0C9495CFA9"}, "not a contract id"),
    ],
)
def test_invalid_state(fields: dict[bytes, bytes], detail: str) -> None:
    r = dec(fields)
    assert r.error == "invalid_state" and r.row is None
    assert detail in r.detail


def test_too_large_is_checked_before_parsing() -> None:
    r = dec({b"state": b"[" + b"1," * 5000 + b"1]"})
    assert r.error == "too_large" and "field 'state' is 10003 bytes, the limit is 4096" in r.detail
    r = dec({f"f{i}".encode(): b"1" for i in range(40)})
    assert r.error == "too_large" and "40 fields" in r.detail


@pytest.mark.parametrize(
    "reply_to, ok",
    [
        (b"statpair:actions:client-7", True),
        (b"statpair:actions:", False),
        (b"statpair:actions", False),
        (b"statpair:states", False),
        (b"other:key", False),
        (b"statpair:actionsX", False),
    ],
)
def test_reply_to_must_be_under_prefix(reply_to: bytes, ok: bool) -> None:
    r = dec({b"state": json.dumps(STATE).encode(), b"reply_to": reply_to})
    if ok:
        assert r.error is None and r.reply_to == reply_to.decode()
    else:
        assert r.error == "invalid_state" and "not a stream name under" in r.detail
        assert r.reply_to == "statpair:actions"  # the error goes to the default stream


@pytest.mark.parametrize("bad", [{b"reply_to": b"foo"}, {b"ttl_ms": b"x"}, {b"contract": b"zz"}])
def test_a_bad_field_keeps_the_client_s_id_and_reply_stream(bad: dict[bytes, bytes]) -> None:
    fields = {b"state": json.dumps(STATE).encode(), b"id": b"t-7"} | bad
    if b"reply_to" not in bad:
        fields[b"reply_to"] = b"statpair:actions:me"
    r = dec(fields)
    assert r.error == "invalid_state" and r.id == "t-7"
    assert r.reply_to == ("statpair:actions" if b"reply_to" in bad else "statpair:actions:me")


def test_ttl_from_entry_and_default() -> None:
    fresh = {b"state": json.dumps(STATE).encode(), b"ttl_ms": b"100"}
    assert dec(fresh, now=NOW + 50).error is None
    r = dec(fresh, now=NOW + 250)
    assert r.error == "expired" and "250 ms old, its ttl_ms is 100" in r.detail
    limits = Limits(4096, "statpair:actions", "statpair:actions:", default_ttl_ms=10)
    assert dec({b"state": json.dumps(STATE).encode()}, now=NOW + 11, limits=limits).error == "expired"
    # An explicit ttl_ms=0 switches the default off for that entry.
    no_ttl = {b"state": json.dumps(STATE).encode(), b"ttl_ms": b"0"}
    assert dec(no_ttl, now=NOW + 1e6, limits=limits).error is None


def test_no_model_skips_length_check() -> None:
    assert dec({b"state": b"[1, 2]"}, state_dim=None).error is None


def test_discrete_dead_band() -> None:
    assert [discrete(a, 0.1) for a in (-0.5, -0.1, 0.0, 0.1, 0.11)] == [-1, 0, 0, 0, 1]


async def test_result_round_trip_through_the_publish_script(fake_redis) -> None:
    """What the worker sends (values, a shared tail) becomes the fields clients parse."""
    r = dec({b"state": json.dumps(STATE).encode(), b"id": b"x1", b"pair": b"A/B"})
    plain = dec({b"state_f32": np.zeros(28, "<f4").tobytes()})
    bad = dec({b"state": b"nope"})
    model = {
        "model_path": "/m.pt",
        "model_mtime_utc": "2026-01-01T00:00:00.000+00:00",
        "model_sha256": "0123456789abcdef",
        "backend": "jit",
        "jit_compiled": "true",
    }
    await fake_redis.xgroup_create("s", "g", id="0", mkstream=True)
    batch = Batch("g", 1000, ["s"])
    batch.start_group(1)
    assert batch.ok("out", r.id, r.entry_id, r.pair, *ok_values(0.5, 0.1, 0.1)) == 0
    assert batch.ok("out", plain.id, "1700000000000-1", None, *ok_values(-0.05, 0.1, 0.0)) == 1
    assert batch.xadd("out", error_fields(bad, 0.2), 1000, 2, answers=(0, bad.entry_id)) == -1
    batch.tail(batch_tail("w1", 20e-6, 50e-6, 3, model))
    batch.tail(batch_tail("w1", 20e-6, 50e-6, 3))
    script = fake_redis.register_script(PUBLISH_LUA)
    assert await batch.run(fake_redis, script) == []  # no XADD failed
    first, second, third = [parse_result(f) for _, f in await fake_redis.xrange("out")]
    assert first.status == "ok" and first.action == 0.5 and first.discrete == 1 and first.pair == "A/B"
    assert first.id == "x1" and first.entry_id == EID.decode()
    assert first.backend == "jit" and first.jit_compiled is True and first.batch_size == 3
    assert first.infer_ms == 0.02 and first.latency_ms == 0.05 and first.queue_ms == 0.1
    assert second.pair is None and second.discrete == 0 and second.action == -0.05
    assert third.status == "error" and third.error == "invalid_state" and third.action is None
    assert third.worker == "w1" and third.backend is None


def test_dead_letter_cuts_long_values() -> None:
    out = dead_letter_fields("1-0", {b"state": b"x" * 5000}, "s", "w", "too_large", "big")
    assert len(out[b"orig:state"]) < 1100 and out["error"] == "too_large"
