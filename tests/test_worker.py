"""The worker on fakeredis: batching, errors, dead letters, model lifecycle,
control commands. Each serving case has a real-Redis twin in test_worker_redis.py."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch
from redis.asyncio import Redis

from agent.checkpoint import load_checkpoint
from tests.conftest import make_settings, write_model
from worker.control import BenchmarkStopped, Control, benchmark
from worker.loop import Worker
from worker.model import ModelManager, prepare
from worker.protocol import parse_result
from worker.settings import Settings
from worker.state import ServerState

STATE = [0.05 * i for i in range(28)]


async def add_states(
    redis: Redis, n: int, stream: str = "statpair:states", **extra: bytes | str
) -> list[bytes]:
    ids = []
    for i in range(n):
        fields = {"state": json.dumps([v + i * 0.01 for v in STATE]), "id": f"c{i}", **extra}
        ids.append(await redis.xadd(stream, fields))
    return ids


async def results(redis: Redis, stream: str = "statpair:actions") -> list:
    return [parse_result(f) for _, f in await redis.xrange(stream)]


async def serve_burst(settings: Settings, redis: Redis, models: ModelManager | None = None) -> Worker:
    models = models or ModelManager(settings.model_path, settings.model_dir, settings.jit)
    await models.check()
    worker = Worker(ServerState(settings, redis, models), burst=True)
    await worker.run()
    return worker


async def test_serves_a_batch_in_one_pass(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path)
    write_model(s.model_dir / "a.pt")
    await add_states(fake_redis, 5, pair="KO/PEP")
    worker = await serve_burst(s, fake_redis)
    out = await results(fake_redis)
    assert [r.id for r in out] == [f"c{i}" for i in range(5)]
    assert all(r.status == "ok" and -1 <= r.action <= 1 for r in out)
    assert {r.batch_size for r in out} == {5} and worker.state.stats.batches == 1
    assert all(r.pair == "KO/PEP" and r.worker == "w1" and r.backend == "eager" for r in out)
    assert all(r.jit_compiled is False and r.model_path.endswith("a.pt") for r in out)
    assert all(r.queue_ms >= 0 and r.infer_ms > 0 and r.latency_ms >= r.infer_ms for r in out)
    # The action is the actor's deterministic output for that state.
    ck = load_checkpoint(s.model_dir / "a.pt")
    want = ck.actor.deterministic(torch.tensor([STATE], dtype=torch.float32)).item()
    assert out[0].action == pytest.approx(want, abs=1e-6)
    assert out[0].discrete == (1 if want > 0.1 else -1 if want < -0.1 else 0)
    pending = await fake_redis.xpending("statpair:states", "statpair-workers")
    assert pending["pending"] == 0


async def test_invalid_entries_do_not_poison_the_batch(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path, max_field_bytes=1024)
    write_model(s.model_dir / "a.pt")
    await fake_redis.xadd(
        "statpair:states", {"state": json.dumps(STATE), "id": "old", "ttl_ms": "1"}, id="1000-0"
    )
    await add_states(fake_redis, 2)
    await fake_redis.xadd("statpair:states", {"state": json.dumps(STATE[:27]), "id": "short"})
    await fake_redis.xadd("statpair:states", {"state_f32": b"\x00" * 2000, "id": "big"})
    await add_states(fake_redis, 1)
    await serve_burst(s, fake_redis)
    by_id = {r.id: r for r in await results(fake_redis)}
    assert by_id["short"].error == "invalid_state"
    assert by_id["short"].detail == "state has 27 values, the model expects 28"
    assert by_id["big"].error == "too_large" and by_id["old"].error == "expired"
    assert [by_id[c].status for c in ("c0", "c1")] == ["ok", "ok"]
    # Each kind of result gets its own shared tail: provenance on ok results only.
    assert by_id["c0"].backend == "eager" and by_id["c0"].latency_ms >= by_id["c0"].infer_ms > 0
    assert by_id["short"].backend is None and by_id["short"].worker == "w1"
    assert by_id["short"].batch_size == by_id["c0"].batch_size
    dead = [f for _, f in await fake_redis.xrange("statpair:states:dead")]
    assert sorted(f[b"error"] for f in dead) == [b"invalid_state", b"too_large"]
    assert all(f[b"source_stream"] == b"statpair:states" for f in dead)
    assert (await fake_redis.xpending("statpair:states", "statpair-workers"))["pending"] == 0


async def test_reply_to_routes_results(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path)
    write_model(s.model_dir / "a.pt")
    await add_states(fake_redis, 2, reply_to="statpair:actions:me")
    await add_states(fake_redis, 1, reply_to="secret:key")
    await serve_burst(s, fake_redis)
    mine = await results(fake_redis, "statpair:actions:me")
    assert len(mine) == 2 and all(r.status == "ok" for r in mine)
    default = await results(fake_redis)
    assert len(default) == 1 and default[0].error == "invalid_state"
    assert await fake_redis.exists("secret:key") == 0


async def test_cold_start_then_model_appears(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path)
    models = ModelManager(s.model_path, s.model_dir, s.jit)
    await add_states(fake_redis, 2)
    await serve_burst(s, fake_redis, models)
    out = await results(fake_redis)
    assert [r.error for r in out] == ["model_unavailable"] * 2
    assert "no model is loaded" in out[0].detail
    write_model(s.model_dir / "a.pt")
    assert await models.check() is True
    await add_states(fake_redis, 1)
    await serve_burst(s, fake_redis, models)
    assert (await results(fake_redis))[-1].status == "ok"


async def test_hot_reload_changes_provenance(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path)
    first = write_model(s.model_dir / "a.pt", seed=1)
    os.utime(first, ns=(1_700_000_000_000_000_000,) * 2)
    models = ModelManager(s.model_path, s.model_dir, s.jit)
    await add_states(fake_redis, 1)
    await serve_burst(s, fake_redis, models)
    write_model(s.model_dir / "b.pt", seed=2)  # newer file in the folder
    assert await models.check() is True
    await add_states(fake_redis, 1)
    await serve_burst(s, fake_redis, models)
    a, b = await results(fake_redis)
    assert a.model_path.endswith("a.pt") and b.model_path.endswith("b.pt")
    assert a.model_sha256 != b.model_sha256 and a.model_mtime_utc != b.model_mtime_utc
    assert a.model_mtime_utc.startswith("2023-11-14T22:13:20")
    # Rewriting the same path is a change too.
    write_model(s.model_dir / "b.pt", seed=3)
    assert await models.check() is True and models.current.sha256 != b.model_sha256
    assert await models.check() is False  # unchanged file: no reload


@pytest.mark.parametrize("bad", ["garbage", "truncated", "state_dim"])
async def test_bad_file_keeps_the_old_model(tmp_path: Path, bad: str) -> None:
    s = make_settings(tmp_path)
    path = write_model(s.model_dir / "a.pt")
    models = ModelManager(s.model_path, s.model_dir, s.jit)
    await models.check()
    good = models.current
    if bad == "garbage":
        path.write_bytes(os.urandom(3000))
    elif bad == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    else:
        write_model(path, state_dim=27)
    assert await models.check() is False
    assert models.current is good and models.reload_failures == 1
    assert "a.pt" in models.last_error
    assert await models.check() is False and models.reload_failures == 1  # not retried until it changes
    write_model(path, seed=5)
    assert await models.check() is True and models.last_error is None


async def test_explicit_model_path_wins(tmp_path: Path) -> None:
    s = make_settings(tmp_path, model_path=tmp_path / "chosen.pt")
    write_model(tmp_path / "chosen.pt", seed=1)
    write_model(s.model_dir / "newer.pt", seed=2)
    models = ModelManager(s.model_path, s.model_dir, s.jit)
    await models.check()
    assert models.current.path == str(tmp_path / "chosen.pt")


async def test_jit_via_env_var(tmp_path: Path, fake_redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAT_PAIR_RL_JIT", "yes")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    s = Settings(consumer="w1", block_ms=50)
    assert s.jit is True
    write_model(s.model_dir / "a.pt")
    await add_states(fake_redis, 3)
    await serve_burst(s, fake_redis)
    out = await results(fake_redis)
    assert {(r.backend, r.jit_compiled) for r in out} == {("jit", True)}


async def test_scripting_failure_falls_back_to_eager(
    tmp_path: Path, fake_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_a, **_k):
        raise RuntimeError("simulated scripting failure")

    monkeypatch.setattr(torch.jit, "script", broken)
    s = make_settings(tmp_path, jit=True)
    write_model(s.model_dir / "a.pt")
    models = ModelManager(s.model_path, s.model_dir, s.jit)
    await add_states(fake_redis, 1)
    await serve_burst(s, fake_redis, models)
    (r,) = await results(fake_redis)
    assert r.status == "ok" and r.backend == "eager" and r.jit_compiled is False
    assert "simulated scripting failure" in models.current.jit_error


async def test_state_f32_encoding(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path)
    write_model(s.model_dir / "a.pt")
    await fake_redis.xadd("statpair:states", {"state_f32": np.asarray(STATE, "<f4").tobytes()})
    await add_states(fake_redis, 1)
    await serve_burst(s, fake_redis)
    f32, js = await results(fake_redis)
    assert f32.status == "ok" and f32.action == pytest.approx(js.action, abs=1e-6)


async def test_max_messages_bounds_the_run(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path, read_count=4)
    write_model(s.model_dir / "a.pt")
    await add_states(fake_redis, 10)
    models = ModelManager(s.model_path, s.model_dir, s.jit)
    await models.check()
    worker = Worker(ServerState(s, fake_redis, models), max_messages=6)
    await worker.run()
    assert worker.state.stats.processed == 6 and len(await results(fake_redis)) == 6


async def control(redis: Redis, worker: Worker, **fields: str) -> dict:
    ctl = Control(worker.state)
    eid = await redis.xadd("statpair:control", fields)
    await ctl.handle(eid.decode(), {k.encode(): v.encode() for k, v in fields.items()})
    ((_, reply),) = await redis.xrevrange("statpair:control:replies", count=1)
    out = {k.decode(): v.decode() for k, v in reply.items()}
    assert out["worker"] == worker.state.consumer and out["cmd"] == fields.get("cmd", "")
    return out


async def test_control_commands(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path, redis_url="redis://user:hunter2@127.0.0.1:6379/0")
    write_model(s.model_dir / "a.pt")
    await add_states(fake_redis, 3)
    worker = await serve_burst(s, fake_redis)
    st = await control(fake_redis, worker, cmd="status", id="q1")
    assert st["status"] == "ok" and st["request_id"] == "q1"
    data = json.loads(st["data"])
    assert data["processed"] == 3 and data["results"] == {"ok": 3}
    assert data["model"]["backend"] == "eager" and data["last_reload_error"] is None
    assert "hunter2" not in st["data"] and "***" in data["redis"]

    write_model(s.model_dir / "a.pt", seed=9)
    rl = json.loads((await control(fake_redis, worker, cmd="reload"))["data"])
    assert rl["swapped"] is True and rl["model_sha256"] == worker.state.models.current.sha256
    # A reload that fails is an error reply (ops QA: it said status ok), and the model stays.
    serving = worker.state.models.current.sha256
    (s.model_dir / "a.pt").write_bytes(b"not a checkpoint")
    failed = await control(fake_redis, worker, cmd="reload")
    assert failed["status"] == "error" and failed["detail"].startswith("reload failed: ")
    assert (
        failed["detail"].endswith(f"; still serving {serving}")
        and worker.state.models.current.sha256 == serving
    )
    write_model(s.model_dir / "a.pt", seed=9)

    bench = await control(fake_redis, worker, cmd="benchmark", batch_sizes="1,8", warmup="2", iters="5")
    figures = json.loads(bench["data"])["batches"]
    assert set(figures) == {"1", "8"} and all(f["p99_ms"] >= f["p50_ms"] > 0 for f in figures.values())

    bad = await control(fake_redis, worker, cmd="benchmark", iters="1000000")
    assert bad["status"] == "error" and "iters must be between" in bad["detail"]
    words = await control(fake_redis, worker, cmd="benchmark", batch_sizes="1,abc")
    assert words["status"] == "error" and words["detail"] == (
        "batch_sizes '1,abc' is not a list of integers, e.g. 1,8,32,128"
    )
    # A SIGTERM meanwhile: the benchmark (a thread asyncio cannot cancel) ends at the next call.
    worker.state.stop.set()
    stopped = await control(fake_redis, worker, cmd="benchmark", batch_sizes="1", warmup="0", iters="10000")
    assert stopped["status"] == "error" and stopped["detail"] == "stopped: the worker is shutting down"
    worker.state.stop.clear()
    unknown = await control(fake_redis, worker, cmd="explode")
    assert unknown["status"] == "error" and "unknown cmd 'explode'" in unknown["detail"]


async def test_control_addressed_to_another_worker_is_ignored(tmp_path: Path, fake_redis: Redis) -> None:
    s = make_settings(tmp_path)
    state = ServerState(s, fake_redis, ModelManager(None, s.model_dir, False))
    await Control(state).handle("1-0", {b"cmd": b"status", b"worker": b"someone-else"})
    assert await fake_redis.exists("statpair:control:replies") == 0


async def test_reclaims_while_reading_ahead_under_load(tmp_path: Path, fake_redis: Redis) -> None:
    """A dead consumer's entry is taken over while the stream stays busy: the
    reclaim pass is not starved by batches read ahead with each publish."""
    s = make_settings(tmp_path, read_count=4, claim_idle_ms=60_000, claim_interval_s=1e-9)
    write_model(s.model_dir / "a.pt")
    await fake_redis.xgroup_create("statpair:states", s.group, id="0", mkstream=True)
    (orphan,) = await add_states(fake_redis, 1, id="orphan")
    await add_states(fake_redis, 1000)
    await fake_redis.xreadgroup(s.group, "dead", {"statpair:states": ">"}, count=1)
    models = ModelManager(s.model_path, s.model_dir, s.jit)
    await models.check()
    worker = Worker(ServerState(s, fake_redis, models), burst=True)
    passes = 0
    real_claim = worker.recovery.claim

    async def claim() -> AsyncIterator[list[tuple[bytes, dict[bytes, bytes]]]]:
        # The orphan turns idle enough at the fifth pass: well inside the drain
        # (250 batches of 4), whatever the speed of the machine.
        nonlocal passes
        passes += 1
        if passes == 5:
            await fake_redis.xclaim("statpair:states", s.group, "dead", 0, [orphan], idle=120_000)
        async for entries in real_claim():
            yield entries

    worker.recovery.claim = claim  # type: ignore[method-assign]
    await worker.run()
    ids = [r.entry_id for r in await results(fake_redis)]
    assert len(ids) == 1001 and ids.count(orphan.decode()) == 1 and worker.state.stats.reclaimed == 1
    assert ids.index(orphan.decode()) < 1000, "reclaimed only once the stream was drained"


def test_a_benchmark_stops_at_its_time_budget(tmp_path: Path) -> None:
    """Other control commands wait behind a benchmark: it ends past MAX_BENCH_S."""
    s = make_settings(tmp_path)
    write_model(s.model_dir / "a.pt")
    model = prepare(s.model_dir / "a.pt", jit=False)
    calls = 0

    def after_three() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    with pytest.raises(BenchmarkStopped, match="stopped: the worker is shutting down"):
        benchmark(model, [1], 0, 10_000, stopping=after_three)
    assert calls == 4  # looked before every call
    with pytest.raises(BenchmarkStopped, match=r"stopped after 0 s: ask for fewer batch_sizes or iters"):
        benchmark(model, [1], 0, 10_000, budget_s=0.0)


async def test_a_removed_model_file_is_said_once_and_the_model_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ops QA: after `rm models/policy.pt` nothing said the file was gone."""
    s = make_settings(tmp_path)
    write_model(s.model_dir / "a.pt")
    models = ModelManager(None, s.model_dir, False)
    await models.check()
    served = models.current
    (s.model_dir / "a.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="worker.model"):
        for _ in range(3):
            assert await models.check() is False
    said = [r.getMessage() for r in caplog.records if "any more" in r.getMessage()]
    assert len(said) == 1 and str(s.model_dir / "a.pt") in said[0] and served.sha256 in said[0]
    assert models.current is served
