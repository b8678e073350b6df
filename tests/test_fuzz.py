"""Bad input at volume (hypothesis): against a real redis-server, random field
sets and values; every entry gets exactly one result, the worker never dies,
and the valid entries mixed in are answered correctly. And the batched decode
gives every entry what decoding it alone gives."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from agent.checkpoint import load_checkpoint
from tests.conftest import make_settings, write_model
from worker.loop import Worker
from worker.model import ModelManager
from worker.protocol import GONE, Fixed, Limits, decode_batch, decode_entry, parse_result, route_to
from worker.state import ServerState

NAMES = [b"state", b"state_f32", b"id", b"pair", b"ttl_ms", b"reply_to", b"junk", "é".encode(), b"\xff"]
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30), 10**30))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8)),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=12,
)
values = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=20_000, max_size=20_100),  # over the field limit
    st.text(max_size=40).map(str.encode),
    st.lists(numbers, min_size=0, max_size=40).map(lambda xs: json.dumps(xs).encode()),
    st.lists(numbers, min_size=28, max_size=28).map(lambda xs: json.dumps(xs).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.floats(width=32), min_size=27, max_size=29).map(lambda xs: np.asarray(xs, "<f4").tobytes()),
    st.sampled_from([b"statpair:actions:fz", b"statpair:actions:", b"other", b"-5", b"0", b"999999"]),
)
garbage_entry = st.dictionaries(st.sampled_from(NAMES), values, min_size=1, max_size=6)
valid_entry = st.lists(st.floats(-5, 5, width=32), min_size=28, max_size=28).map(
    lambda xs: {b"state": json.dumps(xs).encode(), b"valid": b"1"}
)
batch = st.lists(st.one_of(garbage_entry, valid_entry), min_size=1, max_size=40)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    write_model(folder / "models" / "m.pt")
    return folder


@pytest.mark.integration
@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entries=batch)
def test_every_entry_gets_exactly_one_result(
    entries: list[dict[bytes, bytes]], redis_server, model_dir: Path
) -> None:
    asyncio.run(_scenario(entries, redis_server, model_dir))


async def _scenario(entries: list[dict[bytes, bytes]], redis_server, folder: Path) -> None:
    redis = Redis(host=redis_server.host, port=redis_server.port)
    try:
        await redis.flushall()
        ids = [await redis.xadd("statpair:states", e) for e in entries]
        s = make_settings(folder, redis_url="redis://unused", max_field_bytes=16_384, read_count=16)
        models = ModelManager(None, s.model_dir, False)
        await models.check()
        worker = Worker(ServerState(s, redis, models), burst=True)
        await asyncio.wait_for(worker.run(), timeout=60)
        results = {}
        for stream in (b"statpair:actions", b"statpair:actions:fz"):
            for _, fields in await redis.xrange(stream):
                r = parse_result(fields)
                assert r.entry_id not in results, f"two results for {r.entry_id}"
                results[r.entry_id] = r
        assert sorted(results) == sorted(i.decode() for i in ids)
        actor = load_checkpoint(s.model_dir / "m.pt").actor
        for eid, entry in zip(ids, entries, strict=True):
            r = results[eid.decode()]
            if entry.get(b"valid") == b"1":
                want = actor.deterministic(torch.tensor([json.loads(entry[b"state"])], dtype=torch.float32))
                assert r.status == "ok" and r.action == pytest.approx(want.item(), abs=1e-5)
            else:
                assert r.status == "ok" or (r.error and r.detail)
        info = (await redis.xinfo_groups("statpair:states"))[0]
        assert info["pending"] == 0 and worker.state.stats.failed == 0
    finally:
        await redis.aclose()


f32_entry = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=27, max_size=29).map(
    lambda xs: {b"state_f32": np.asarray(xs, "<f4").tobytes(), b"id": b"c"}
)


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(
        st.one_of(garbage_entry, valid_entry, f32_entry, st.just(GONE)), min_size=1, max_size=40
    ),
    state_dim=st.sampled_from([28, None]),
)
def test_batch_decode_equals_decoding_each_entry(
    entries: list[dict[bytes, bytes]], state_dim: int | None
) -> None:
    """The worker decodes a read at once (one buffer, one finiteness check): it must
    give every entry exactly what decoding that entry alone gives."""
    limits = Limits(
        max_field_bytes=16_384,
        default_stream="statpair:actions",
        reply_prefix="statpair:actions:",
        default_ttl_ms=0,
    )
    now = 1_700_000_000_500.0
    raw = [(f"1700000000000-{i}".encode(), e) for i, e in enumerate(entries)]
    target = None if state_dim is None else Fixed(state_dim)
    got = decode_batch(raw, now, limits, route_to(target))
    alone = [decode_entry(eid, e, target, now, limits) for eid, e in raw]
    assert [(r.entry_id, r.id, r.reply_to, r.pair, r.error, r.detail) for r in got.reqs] == [
        (r.entry_id, r.id, r.reply_to, r.pair, r.error, r.detail) for r in alone
    ]
    assert got.valid == [i for i, r in enumerate(alone) if r.error is None]
    if state_dim is None:
        assert got.groups == [] and got.unrouted == got.valid
    elif got.valid:
        (group,) = got.groups
        assert group.where == got.valid and got.unrouted == []
        assert np.array_equal(group.rows, np.stack([alone[i].row for i in got.valid]))
        assert group.rows.flags.writeable
