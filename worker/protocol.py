"""The wire format. Input entries are decoded here into ``Request`` rows (or a
typed error); results and dead letters are encoded here; clients parse results
with ``parse_result``. Nothing else touches raw stream fields.

The worker's decode is hand-written rather than a pydantic model per entry:
it runs for every state on the hot path and a batch of 128 must cost
microseconds, not a model validation each. Clients use the pydantic models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

ErrorCode = Literal[
    "invalid_state",
    "too_large",
    "expired",
    "model_unavailable",
    "no_model_for_pair",
    "contract_mismatch",
    "internal",
]

ANY_PAIR = "*"  # the contracts hash field of a model that answers every pair (see CONTRACTS_KEY)
SHARDS_FIELD = "#shards"  # the contracts hash field holding the workers' SHARDS (not a pair label)
MAX_ID_CHARS = 128
MAX_PAIR_CHARS = 64
MAX_CONTRACT_CHARS = 64
_CONTRACT_ID = re.compile(r"[0-9a-f]{12}")  # agent.contract: sha256's first 12 hex digits
MAX_FIELDS = 32
DEAD_LETTER_VALUE_BYTES = 1024  # copies of rejected fields are cut to this


@dataclass(slots=True)
class Request:
    """One input entry after decoding: a state row, or the error it earned."""

    entry_id: str
    id: str
    reply_to: str
    pair: str | None = None
    row: np.ndarray | None = None
    error: ErrorCode | None = None
    detail: str = ""
    source: int = 0  # which of its consume loop's streams it came from (Streams.sources)

    def fail(self, code: ErrorCode, detail: str) -> Request:
        self.error, self.detail, self.row = code, detail, None
        return self


@dataclass(frozen=True, slots=True)
class Limits:
    """What decode needs from the settings (kept apart so it is cheap to pass)."""

    max_field_bytes: int
    default_stream: str
    reply_prefix: str
    default_ttl_ms: int
    forbidden_prefixes: tuple[str, ...] = ()  # the shared stream may not name a strategy's replies


def plain_label(label: str) -> str:
    """A pair label without case or separators (``MRK/PFE``, ``mrk-pfe`` → ``mrkpfe``): two
    labels equal so are the same pair mistyped."""
    return "".join(ch for ch in label.casefold() if ch.isalnum())


def entry_time_ms(entry_id: str) -> int:
    """The millisecond timestamp in a stream entry id ``<ms>-<seq>``."""
    return int(entry_id.partition("-")[0])


def _text(value: bytes, name: str, limit: int) -> str:
    if len(value) > 4 * limit:  # UTF-8 needs at most 4 bytes a character
        raise ValueError(f"{name} is {len(value)} bytes, the limit is {limit} characters")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not valid UTF-8") from None
    if len(text) > limit:
        raise ValueError(f"{name} has {len(text)} characters, the limit is {limit}")
    return text


T = TypeVar("T")


def _small(
    fields: dict[bytes, bytes], name: bytes, problems: list[str], parse: Callable[..., T], *args: object
) -> T | None:
    """``parse`` of one small field, or None when it is absent or bad (its problem noted)."""
    raw = fields.get(name)
    if raw is None:
        return None
    try:
        return parse(raw, *args)
    except ValueError as exc:
        problems.append(str(exc))
        return None


def _client_id(raw: bytes) -> str:
    return _text(raw, "id", MAX_ID_CHARS)


def _reply_to(raw: bytes, limits: Limits) -> str:
    reply = _text(raw, "reply_to", 256)
    prefix = limits.reply_prefix
    if not reply.startswith(prefix) or len(reply) == len(prefix):
        raise ValueError(f"reply_to {reply!r} is not a stream name under {prefix!r}")
    for owned in limits.forbidden_prefixes:
        if reply.startswith(owned):
            raise ValueError(
                f"reply_to {reply!r} is a strategy's (under {owned!r}): send from its own stream"
            )
    return reply


def _pair(raw: bytes) -> str:
    return _text(raw, "pair", MAX_PAIR_CHARS)


def _contract_id(raw: bytes) -> str:
    text = _text(raw, "contract", MAX_CONTRACT_CHARS)
    if not _CONTRACT_ID.fullmatch(text):
        raise ValueError(
            f"contract {text[:32]!r} is not a contract id (12 hex digits, as the workers publish)"
        )
    return text


def _ttl_ms(raw: bytes) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"ttl_ms {raw[:32].decode('utf-8', 'replace')!r} is not a whole number of milliseconds"
        ) from None
    if value < 0:
        raise ValueError(f"ttl_ms {value} is negative")
    return value


Entries = list[tuple[bytes, dict[bytes, bytes]]]
"""A read: entry ids and their fields, as redis-py returns them."""

# The fields of an entry whose payload is gone (XDEL'ed or trimmed while still
# pending). Compared by identity, so no field set a client sends can look like it.
GONE: dict[bytes, bytes] = {}


class Withheld(bytes):
    """A field value the worker did not read (worker/reads.py): too large, or (under
    ``WITHHELD_FIELDS``) fields beyond what an entry may have. Empty, and no client can send
    one: it stands for ``size`` bytes of the original that stayed in Redis."""

    size: int

    def __new__(cls, size: int) -> Withheld:
        obj = super().__new__(cls, b"")
        obj.size = size
        return obj


# Where the reader puts what it withheld of an entry with too many fields: their count.
WITHHELD_FIELDS = b"\x00fields"


def value_size(value: bytes) -> int:
    """A field value's size in Redis (a withheld one's original size)."""
    return value.size if isinstance(value, Withheld) else len(value)


class Target(Protocol):
    """What a state is decoded for: the size of the state and the contract id of the
    model that will run it (a ``worker.model.ServedModel``, or ``Fixed``)."""

    @property
    def state_dim(self) -> int: ...

    @property
    def contract_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Fixed:
    """A target that is not a model: a state size and, optionally, a contract id."""

    state_dim: int
    contract_id: str | None = None


Route = Callable[[str | None], Target | None]
"""The target of an entry's ``pair`` (None: no model for it)."""


def route_to(target: Target | None) -> Route:
    """Every pair to one target (or to none)."""
    return lambda _pair: target


@dataclass(slots=True)
class Group:
    """The valid entries of one read that go to one target: their indexes and their
    states as one (len(where), state_dim) float32 matrix."""

    target: Target
    where: list[int]
    rows: np.ndarray


@dataclass(slots=True)
class Decoded:
    """One read, decoded: a request per entry (in order); the valid ones grouped by
    target; and the valid ones no target takes (``unrouted``: their pair has no model)."""

    reqs: list[Request]
    groups: list[Group]
    unrouted: list[int]

    @property
    def valid(self) -> list[int]:
        return sorted([i for g in self.groups for i in g.where] + self.unrouted)


def decode_batch(
    entries: list[tuple[bytes, dict[bytes, bytes]]],
    now_ms: float,
    limits: Limits | Sequence[Limits],
    route: Route,
    sources: Sequence[int] | None = None,
) -> Decoded:
    """Decode a whole read. Never raises on bad input: problems become ``Request.error``.

    The fields are checked entry by entry, each with the limits of the stream it came
    from (``sources``: its index into ``limits``; none: all from the first); each entry
    goes to the target its ``pair`` routes to (its state size and contract are checked
    against it), and a target's states are joined into one buffer and checked together
    (finiteness), the way its model consumes them."""
    reqs: list[Request] = []
    by_target: dict[int, tuple[Target, list[bytes], list[int]]] = {}
    unrouted: list[int] = []
    per_source = [limits] if isinstance(limits, Limits) else list(limits)
    for n, (entry_id, fields) in enumerate(entries):
        source = sources[n] if sources else 0
        req, blob, target = _decode(entry_id, fields, now_ms, per_source[source], route)
        req.source = source
        if blob is not None:
            if target is None:
                if _finite(req, np.frombuffer(blob, dtype="<f4")):
                    unrouted.append(len(reqs))
            else:
                slot = by_target.get(id(target))
                if slot is None:
                    slot = by_target[id(target)] = (target, [], [])
                slot[1].append(blob)
                slot[2].append(len(reqs))
        reqs.append(req)
    groups = []
    for target, blobs, where in by_target.values():
        # A bytearray: torch wants a writable buffer (and the join copies once anyway).
        rows = np.frombuffer(bytearray().join(blobs), dtype="<f4").reshape(len(blobs), target.state_dim)
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            for j in np.flatnonzero(~finite).tolist():
                _finite(reqs[where[j]], rows[j])
            where = [i for i, ok in zip(where, finite.tolist(), strict=True) if ok]
            rows = rows[finite]
        if where:
            groups.append(Group(target, where, rows))
    return Decoded(reqs, groups, unrouted)


def decode_entry(
    entry_id: bytes | str,
    fields: dict[bytes, bytes],
    target: Target | None,
    now_ms: float,
    limits: Limits,
) -> Request:
    """Decode one entry for ``target`` (``decode_batch`` of one), its state in ``Request.row``."""
    req, blob, _ = _decode(entry_id, fields, now_ms, limits, route_to(target))
    if blob is not None:
        row = np.frombuffer(blob, dtype="<f4")
        if _finite(req, row):
            req.row = row
    return req


def _finite(req: Request, row: np.ndarray) -> bool:
    if np.isfinite(row).all():
        return True
    bad = int(np.flatnonzero(~np.isfinite(row))[0])
    req.fail("invalid_state", f"state[{bad}] is {row[bad]}, states must be finite numbers")
    return False


def _decode(
    entry_id: bytes | str,
    fields: dict[bytes, bytes],
    now_ms: float,
    limits: Limits,
    route: Route,
) -> tuple[Request, bytes | None, Target | None]:
    """Everything but the finiteness of the state: the request, its state as
    little-endian float32 bytes of the right size (None when the entry failed),
    and the target its pair routes to."""
    eid = entry_id.decode("ascii") if isinstance(entry_id, bytes) else entry_id
    req = Request(entry_id=eid, id=eid, reply_to=limits.default_stream)
    if fields is GONE:
        return (
            req.fail("internal", "the entry was deleted from the stream before it could be answered"),
            None,
            None,
        )
    # Sizes first, before any parsing.
    too_large = None
    withheld = fields.get(WITHHELD_FIELDS)  # the reader withheld something (worker/reads.py)
    if withheld is not None:
        too_large = _withheld(fields, withheld, limits)
        fields = {k: v for k, v in fields.items() if not isinstance(v, Withheld)}
    elif len(fields) > MAX_FIELDS:
        too_large = f"entry has {len(fields)} fields, the limit is {MAX_FIELDS}"
    else:
        for name, value in fields.items():
            if len(value) > limits.max_field_bytes or len(name) > 256:
                shown = name[:64].decode("utf-8", "replace")
                too_large = f"field {shown!r} is {len(value)} bytes, the limit is {limits.max_field_bytes}"
                break
    # The small fields are read even for an oversized entry, so that its error
    # still carries the client's id and goes to its reply stream; each is read on
    # its own, so that one bad field does not lose the others (the id above all).
    problems: list[str] = []
    cid = _small(fields, b"id", problems, _client_id)
    if cid:
        req.id = cid
    reply = _small(fields, b"reply_to", problems, _reply_to, limits)
    if reply is not None:
        req.reply_to = reply
    pair = _small(fields, b"pair", problems, _pair)
    if pair is not None:
        req.pair = pair
    built_for = _small(fields, b"contract", problems, _contract_id)
    ttl = _small(fields, b"ttl_ms", problems, _ttl_ms)
    if ttl is None:
        ttl = limits.default_ttl_ms
    if problems and not too_large:
        return req.fail("invalid_state", problems[0]), None, None
    if too_large:
        return req.fail("too_large", too_large), None, None
    if ttl > 0:
        age = now_ms - entry_time_ms(eid)
        if age > ttl:
            return req.fail("expired", f"state is {age:.0f} ms old, its ttl_ms is {ttl}"), None, None
    target = route(req.pair)
    contract = None if target is None else target.contract_id
    if built_for is not None and contract is not None and built_for != contract:
        return (
            req.fail(
                "contract_mismatch",
                f"the state was built for contract {built_for} but this worker serves contract {contract}: "
                "fetch the contract again and rebuild the features",
            ),
            None,
            None,
        )
    js, f32 = fields.get(b"state"), fields.get(b"state_f32")
    if (js is None) == (f32 is None):
        return (
            req.fail(
                "invalid_state",
                "entry has both 'state' and 'state_f32', send exactly one"
                if js is not None
                else "entry has no 'state' (JSON array) or 'state_f32' (little-endian float32 bytes)",
            ),
            None,
            None,
        )
    if js is None:
        assert f32 is not None  # exactly one of the two, checked above
        if len(f32) % 4:
            return (
                req.fail("invalid_state", f"state_f32 is {len(f32)} bytes, not a whole number of float32"),
                None,
                None,
            )
        blob, size = f32, len(f32) // 4
    else:
        try:
            values = json.loads(js)
        except (ValueError, RecursionError):
            return req.fail("invalid_state", "state is not valid JSON"), None, None
        if not isinstance(values, list):
            return (
                req.fail(
                    "invalid_state", f"state is a JSON {type(values).__name__}, not an array of numbers"
                ),
                None,
                None,
            )
        for i, v in enumerate(values):
            if type(v) is not float and type(v) is not int:
                return (
                    req.fail("invalid_state", f"state[{i}] is {json.dumps(v)[:40]}, not a number"),
                    None,
                    None,
                )
        try:
            wide = np.asarray(values, dtype=np.float64)
        except OverflowError:
            return req.fail("invalid_state", "state has an integer too large for a float"), None, None
        with np.errstate(over="ignore"):
            row = wide.astype("<f4")
        if not np.isfinite(row).all() and np.isfinite(wide).all():
            bad = int(np.flatnonzero(~np.isfinite(row))[0])
            return (
                req.fail("invalid_state", f"state[{bad}] is {wide[bad]:g}, beyond float32 range"),
                None,
                None,
            )
        blob, size = row.tobytes(), len(values)
    if target is not None and size != target.state_dim:
        detail = f"state has {size} values, the model expects {target.state_dim}"
        return req.fail("invalid_state", detail), None, None
    return req, blob, target


def _withheld(fields: dict[bytes, bytes], marker: bytes, limits: Limits) -> str:
    """Why an entry whose fields the reader did not all read is too large."""
    count = value_size(marker)
    if count > MAX_FIELDS:
        return f"entry has {count} fields, the limit is {MAX_FIELDS}"
    for name, value in fields.items():
        if isinstance(value, Withheld) and name != WITHHELD_FIELDS:
            shown = name[:64].decode("utf-8", "replace")
            return f"field {shown!r} is {value.size} bytes, the limit is {limits.max_field_bytes}"
    return f"entry is larger than the limit of {limits.max_field_bytes} bytes a field"


def discrete(action: float, dead_band: float) -> int:
    """-1 short, 0 flat, 1 long the spread."""
    if action > dead_band:
        return 1
    if action < -dead_band:
        return -1
    return 0


def _base(req: Request) -> dict[str, str]:
    out = {"id": req.id, "entry_id": req.entry_id}
    if req.pair is not None:
        out["pair"] = req.pair
    return out


# A result entry is its own fields followed by a tail shared by its whole batch
# (worker, model provenance, batch timings). For an ok result the worker sends
# only the values, in the order of OK_FIELDS (without "status", and without
# "pair" when the state had none): the publish script (worker/answer.py) is
# generated from OK_FIELDS, spells the names and appends the tail server-side,
# so the tail is encoded once per batch, not once per entry.

OK_FIELDS = ("id", "entry_id", "pair", "status", "action", "discrete", "queue_ms")
"""An ok result's own fields, in their order on the wire; ``status`` is ``ok``."""


def ok_values(action: float, dead_band: float, queue_ms: float) -> tuple[str, str, str]:
    """An ok result's own values as sent: action, discrete, queue_ms. The action is
    the actor's float32 output with 9 significant digits, what a float32 needs to
    round-trip (``repr`` of the widened float spent 17 digits, at twice the cost)."""
    return f"{action:.9g}", str(discrete(action, dead_band)), f"{queue_ms:.3f}"


def error_fields(req: Request, queue_ms: float) -> dict[str, str]:
    out = _base(req)
    out["status"] = "error"
    out["error"] = req.error or "internal"
    out["detail"] = req.detail
    out["queue_ms"] = f"{queue_ms:.3f}"
    return out


def batch_tail(
    worker: str, infer_s: float, latency_s: float, batch_size: int, model: dict[str, str] | None = None
) -> dict[str, str]:
    """The fields every result of a batch shares (``model`` only for ok results)."""
    out = {"worker": worker}
    if model:
        out.update(model)
    out.update({"infer_ms": ms(infer_s), "latency_ms": ms(latency_s), "batch_size": str(batch_size)})
    return out


def dead_letter_fields(
    entry_id: str,
    fields: dict[bytes, bytes],
    source: str,
    worker: str,
    error: str,
    detail: str,
    deliveries: int | None = None,
) -> dict[bytes | str, bytes | str]:
    """A copy of a rejected entry with the reason; long values are cut."""
    out: dict[bytes | str, bytes | str] = {}
    for name, value in list(fields.items())[:MAX_FIELDS]:
        key = b"orig:" + name[:64]
        if isinstance(value, Withheld):  # never read: it stayed in Redis
            out[key] = f"...[{value.size} bytes, not read]".encode()
        elif len(value) <= DEAD_LETTER_VALUE_BYTES:
            out[key] = value
        else:
            out[key] = value[:DEAD_LETTER_VALUE_BYTES] + b"...[cut]"
    out.update(
        {"entry_id": entry_id, "source_stream": source, "worker": worker, "error": error, "detail": detail}
    )
    if deliveries is not None:
        out["deliveries"] = str(deliveries)
    return out


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


# --- Client side: typed results -------------------------------------------------------


class Result(BaseModel):
    """A result entry as clients see it (all fields arrive as strings)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str
    entry_id: str
    status: Literal["ok", "error"]
    worker: str
    pair: str | None = None
    action: float | None = None
    discrete: int | None = None
    model_path: str | None = None
    model_mtime_utc: str | None = None
    model_sha256: str | None = None
    model_version: str | None = None  # the registry version, when the model came from the registry
    backend: Literal["eager", "jit"] | None = None
    jit_compiled: bool | None = None
    contract: str | None = None  # the answering model's contract id
    error: ErrorCode | None = None
    detail: str | None = None
    queue_ms: float | None = None
    infer_ms: float | None = None
    latency_ms: float | None = None
    batch_size: int | None = None


def as_text(value: object) -> str:
    """What redis-py answered (bytes, or text with decode_responses), as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_result(fields: dict[bytes | str, bytes | str]) -> Result:
    # Inline, not as_text: this is the client's per-result path.
    return Result.model_validate(
        {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
    )


def encode_state(values: np.ndarray | Sequence[float]) -> dict[str, bytes]:
    """The fast encoding for a client: ``{'state_f32': little-endian float32 bytes}``."""
    arr = np.asarray(values, dtype="<f4")
    if arr.ndim != 1:
        raise ValueError(f"a state is one vector, got shape {arr.shape}")
    return {"state_f32": arr.tobytes()}
