"""The heartbeat: each worker keeps a hash ``HEARTBEAT_PREFIX<consumer>`` with a
TTL (name, host, pid, model, the model answering each pair, entries answered, last
seen), so the keys present are the live workers, and publishes the pair contract it
serves (CONTRACTS_KEY) for strategies to build states with; it reads its peers'
heartbeats and says when workers of one stream answer a pair with different models
(a mixed fleet); with metrics on, it also samples the group's lag."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from worker.protocol import ANY_PAIR, SHARDS_FIELD
from worker.publish import refusal
from worker.retry import pause, retrying
from worker.state import ServerState

if TYPE_CHECKING:
    from worker.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_LISTED = 1000  # heartbeat hashes read by one scan


def heartbeat_key(state: ServerState) -> str:
    return f"{state.settings.heartbeat_prefix}{state.consumer}"


async def beat(state: ServerState, metrics: Metrics | None = None) -> None:
    """Write this worker's heartbeat hash once (and sample the group for metrics)."""
    s, key = state.settings, heartbeat_key(state)
    champions = state.models.champions()
    m = state.models.primary
    # The contracts first: whoever sees this worker's contract id in its heartbeat can
    # then fetch the contract itself. (Another key: on a cluster, maybe another node.)
    await publish_contracts(state)
    pipe = state.redis.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "name": s.consumer,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "model_path": m.path if m else "",
            "model_sha256": m.sha256 if m else "",
            "model_version": (m.version or "") if m else "",
            "backend": m.backend if m else "",
            "contract": m.contract_id if m else "",
            "shards": ",".join(map(str, s.served_shards)) if s.redis_cluster else "",
            "models": str(len(champions)),  # the default and the per-pair models: what answers
            "challengers": str(len(state.models.challengers())),
            "processed": str(state.stats.processed),
            "last_seen_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "instance": state.instance,
            "beat_ms": str(int(time.time() * 1000)),  # changes at every beat: tells a live worker
            "stream": fleet_of(state),
            "routes": json.dumps(routes(state), sort_keys=True),
        },
    )
    pipe.expire(key, s.heartbeat_ttl_s)
    await pipe.execute()
    await check_fleet(state, metrics)
    if metrics is None:
        return
    lag = pending = 0
    for streams in state.served:
        try:
            groups = await state.redis.xinfo_groups(streams.states)
        except ResponseError as exc:  # no stream yet (a fresh or flushed Redis): nothing queued
            logger.debug("group lag not sampled: %s", exc)
            continue
        for group in groups:
            if group["name"].decode() == s.group:
                lag, pending = lag + (group.get("lag") or 0), pending + group["pending"]
    metrics.lag.set(lag)
    metrics.pending.set(pending)
    metrics.sync(state)


async def publish_contracts(state: ServerState) -> None:
    """The contract of every model this worker serves, in CONTRACTS_KEY: the field of
    a pair with a model of its own is that pair, the default model's is its pair (``*``
    when it names none); pairs it no longer serves are removed (another worker serving
    them writes them back)."""
    key, published = state.settings.contracts_key, state.published_contracts
    fields: dict[FieldT, EncodableT] = {}
    for route, model in state.models.champions().items():
        # The default model answers every pair only when it was trained on no named pair (the
        # synthetic generator's): one trained on MRK/PFE is published as MRK/PFE's.
        field = (model.contract.pair or ANY_PAIR) if route == "default" else route
        fields.setdefault(field, model.contract.to_json())
    if fields and state.settings.redis_cluster:
        # How the workers shard the streams: a client sharding otherwise is told, not left waiting.
        fields[SHARDS_FIELD] = str(state.settings.shards)
    gone = published - {str(f) for f in fields}
    if fields:
        await state.redis.hset(key, mapping=fields)
    if gone:
        await state.redis.hdel(key, *gone)
    state.published_contracts = {str(f) for f in fields}


async def heartbeat(state: ServerState, metrics: Metrics | None = None) -> None:
    """Refresh the heartbeat every third of its TTL until the worker stops."""
    interval = state.settings.heartbeat_ttl_s / 3
    while not state.stop.is_set():
        try:
            await retrying(lambda: beat(state, metrics), state.stop, "refreshing the heartbeat", loud=False)
        except ResponseError as exc:
            why = refusal(exc)
            if why is None:
                raise
            # Redis refuses writes (full, read-only): the consume loop said so once; try again later.
            logger.debug("heartbeat not refreshed: %s", why)
        await pause(state.stop, interval)


ANY_LABEL = "*"  # in a heartbeat's routes: the model answering every label (a synthetic default)
NO_LABEL = ""  # the model answering a state that names no pair


def fleet_of(state: ServerState) -> str:
    """What makes workers one fleet: the stream they read and their group."""
    return f"{state.settings.states_stream} {state.settings.group}"


def model_label(model: Any) -> str:
    """A served model as the fleet compares it: its sha (16 hex digits), and version."""
    return f"{model.sha256}@{model.version}" if model.version else str(model.sha256)


def routes(state: ServerState) -> dict[str, str]:
    """Which model this worker answers each pair label with (see ANY_LABEL, NO_LABEL)."""
    out: dict[str, str] = {}
    for route, model in state.models.champions().items():
        if route != "default":
            out[route] = model_label(model)
            continue
        out[NO_LABEL] = model_label(model)
        out[model.contract.pair or ANY_LABEL] = model_label(model)
    return out


def divergence(workers: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """Pair labels (``""``: states without one) that the given workers (heartbeats) would
    answer with different models, and each worker's model for them (``none``: it would
    refuse the label, no_model_for_pair). Workers with no model (they defer) are left out."""
    answering = {}
    for w in workers:
        try:
            table = json.loads(w.get("routes") or "{}")
        except ValueError:
            continue
        if table:
            answering[w.get("name", "?")] = table
    labels = sorted({label for table in answering.values() for label in table} - {ANY_LABEL})
    out: dict[str, dict[str, str]] = {}
    for label in labels:
        models = {
            name: table.get(label) or (table.get(ANY_LABEL) if label else None) or "none"
            for name, table in sorted(answering.items())
        }
        if len(set(models.values())) > 1:
            out[label] = models
    return out


async def check_fleet(state: ServerState, metrics: Metrics | None = None) -> None:
    """Compare the models of the live workers of this worker's stream (their heartbeats):
    a change in what diverges is said once (WARNING, naming the workers), and kept for
    cmd=status and the statpair_fleet_divergent metric."""
    mine = fleet_of(state)
    peers = [w for w in await live_workers(state) if w.get("stream", mine) == mine]
    found = divergence(peers)
    if found != state.fleet_divergent:
        if found:
            logger.warning(
                "workers on %s answer pairs with different models (a mixed fleet): %s",
                state.settings.states_stream,
                "; ".join(
                    f"{label or 'states without a pair'}: "
                    + ", ".join(f"{name} {model}" for name, model in models.items())
                    for label, models in found.items()
                ),
            )
        elif state.fleet_divergent:
            logger.info(
                "the workers on %s answer every pair with the same model again", state.settings.states_stream
            )
        state.fleet_divergent = found
    if metrics is not None:
        metrics.fleet_divergent.set(len(found))


async def live_workers(state: ServerState) -> list[dict[str, str]]:
    """Heartbeat hashes of every live worker (SCAN of the prefix, bounded)."""
    out = []
    async for key in state.redis.scan_iter(match=f"{state.settings.heartbeat_prefix}*", count=100):
        data: dict[bytes, bytes] = await state.redis.hgetall(key)  # type: ignore[assignment]  # bytes: decode_responses off
        out.append({k.decode(): v.decode() for k, v in data.items()})
        if len(out) >= MAX_LISTED:
            break
    return sorted(out, key=lambda d: d.get("name", ""))


async def peer_has_model(state: ServerState) -> bool:
    """Whether another live worker (by its heartbeat) serves a model."""
    return any(w.get("model_sha256") and w.get("name") != state.consumer for w in await live_workers(state))
