"""The one settings model: read from the environment once, in ``main()``, and
passed down. Environment variable names are the field names in upper case."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.shards import MAX_SHARDS, STRATEGY_NAME, strategy_keys

# redis-py 8 closes a socket idle for 5 s (its default socket_timeout); a
# blocking read must return well before that.
REDIS_SOCKET_TIMEOUT_S = 5.0


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
REDIS_SCHEMES = ("redis", "rediss", "unix")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """A setting the worker cannot run with: one sentence naming the variable."""


def parse_shards(text: str, shards: int | None) -> list[int]:
    """``all``, or shard numbers and ranges: ``0,2,5``, ``0-3`` (``shards`` None: the syntax
    only, no bound)."""
    if text.strip().lower() == "all":
        return list(range(shards or 0))
    out: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ValueError(
                f"must be 'all' or shard numbers and ranges such as 0,2,5 or 0-3, got {text!r}"
            ) from None
        if first > last:
            raise ValueError(f"the range {part.strip()!r} runs backwards (write {last}-{first})")
        if first < 0 or (shards is not None and last >= shards):
            raise ValueError(f"shard {part.strip()!r} is outside 0..{(shards or MAX_SHARDS) - 1}")
        out.update(range(first, last + 1))
    return sorted(out)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Everything the worker can be told. Each field's description is the doc."""

    # protected_namespaces=(): MODEL_PATH, MODEL_DIR, … are the settings' names (pydantic-settings
    # before 2.6 protects "model_" fields, with a warning each).
    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
        allow_inf_nan=False,
        protected_namespaces=(),
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis to serve from; redis://, rediss:// (TLS), may carry a user and password. "
        "With REDIS_CLUSTER: any node of the cluster.",
    )
    redis_ca_file: Path | None = Field(
        None, description="CA certificate(s) to verify a rediss:// server with (default: the system's)."
    )
    redis_cluster: bool = Field(
        False,
        description="REDIS_URL names a node of a Redis Cluster: shard the streams over it (see SHARDS).",
    )
    shards: int = Field(
        1,
        ge=1,
        le=MAX_SHARDS,
        description="With REDIS_CLUSTER: how many shards the streams are split into (the same for every "
        "worker and client); a pair's states always go to one shard.",
    )
    serve_shards: str = Field(
        "all",
        description="With REDIS_CLUSTER: the shards this worker serves, e.g. 0,2,5 or 0-3 (default all).",
    )
    states_stream: str = Field(
        "statpair:states",
        description="The shared input stream any client may XADD states to (deployments without ACLs).",
    )
    strategies: str = Field(
        "",
        description="Strategies with streams of their own, comma-separated: strategy S sends to "
        "STATES_STREAM:S and gets answers under REPLY_PREFIX S: (default REPLY_PREFIX S:results), so "
        "an ACL user per strategy can be kept to its own keys. Workers read every one, fairly.",
    )
    group: str = Field("statpair-workers", description="Consumer group shared by all workers.")
    consumer: str = Field(
        default_factory=default_consumer_name, description="This worker's consumer name (default: host-pid)."
    )
    results_stream: str = Field("statpair:actions", description="Default result stream.")
    reply_prefix: str = Field(
        "statpair:actions:", description="A reply_to stream must start with this prefix."
    )
    reply_ttl_s: int = Field(
        60,
        ge=1,
        le=86_400,
        description="Each reply_to stream a worker writes to expires this long after its last answer "
        "(a client's own reply stream outlives its timeout; an abandoned one goes).",
    )
    dead_stream: str = Field("statpair:states:dead", description="Dead-letter stream for rejected entries.")
    control_stream: str = Field("statpair:control", description="Control commands, read by every worker.")
    control_replies: str = Field("statpair:control:replies", description="Answers to control commands.")
    heartbeat_prefix: str = Field("statpair:workers:", description="Per-worker heartbeat hash key prefix.")
    contracts_key: str = Field(
        "statpair:contracts",
        description="Hash where workers publish the pair contract they serve (field '*': every pair); "
        "clients read it.",
    )
    results_maxlen: int = Field(100_000, ge=1, description="Approximate MAXLEN of each result stream.")
    trim_states: bool = Field(
        True,
        description="At each reclaim pass, trim the states stream of the entries every consumer group "
        "has acknowledged (XTRIM MINID ~); off: the stream keeps every state until trimmed by hand.",
    )
    dead_maxlen: int = Field(10_000, ge=1, description="Approximate MAXLEN of the dead-letter stream.")
    strict_settings: bool = Field(
        False,
        description="An environment variable that looks like a setting but is none (MODEL_UIR, "
        "STATPAIR_RL_JIT) stops the worker (exit 2) instead of one warning each.",
    )
    allow_eviction: bool = Field(
        False,
        description="Serve from a Redis whose maxmemory-policy evicts keys (allkeys-*, volatile-*): it "
        "may evict the states stream with its pending entries, results and heartbeats. Off: refused.",
    )
    read_count: int = Field(128, ge=1, le=10_000, description="Most entries read (and inferred) per batch.")
    block_ms: int = Field(1000, ge=1, description="XREADGROUP BLOCK; must stay below the 5 s socket timeout.")
    idle_spin_ms: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="After a batch, busy-wait this long for the next read instead of sleeping: "
        "lower latency at low rates for a core's worth of CPU (0 = off).",
    )
    max_field_bytes: int = Field(
        16_384, ge=64, description="Largest accepted field value, checked before parsing."
    )
    state_ttl_ms: int = Field(0, ge=0, description="Default age limit for a state (0 = no limit).")
    dead_band: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="An action whose absolute value is at or below this is 'flat' (discrete 0).",
    )
    model_path: Path | None = Field(None, description="Serve this checkpoint (wins over MODEL_DIR).")
    model_dir: Path = Field(
        Path("models"), description="Serve the newest *.pt here when MODEL_PATH is unset."
    )
    model_uri: str | None = Field(
        None,
        description="Serve from MLflow's model registry: models:/<name>@<alias> follows the alias, "
        "models:/<name>/<version> pins a version (wins over MODEL_PATH and MODEL_DIR).",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        validate_default=True,  # so that MODEL_URI without it is an error
        description="The MLflow server holding the registry (needed with MODEL_URI).",
    )
    model_cache_dir: Path = Field(
        Path("~/.cache/statpair/models"),
        description="Registry versions are downloaded here, one folder per <name>/<version>; "
        "a cold start with the registry down serves the newest one.",
    )
    registry_poll_s: float = Field(
        10.0, gt=0, description="How often the alias is resolved (one small request) with MODEL_URI."
    )
    registry_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Hard bound on one registry call (MLflow's HTTP timeout too, with at most 2 retries).",
    )
    registry_download_timeout_s: float = Field(
        120.0, gt=0, description="Hard bound on downloading one version's checkpoint."
    )
    registry_retry_failed_s: float = Field(
        600.0,
        gt=0,
        description="A version that failed to download, verify or load is tried again only when "
        "the alias moves, or after this long.",
    )
    pair_model_uris: str = Field(
        "",
        description="Per-pair models from the registry: models:/<name>@<alias> URIs, comma-separated, "
        "one registered model per pair (its pair is in its contract). Per-pair folders: MODEL_DIR/pairs/*/.",
    )
    challenger_uris: str = Field(
        "",
        description="Challengers from the registry (e.g. models:/statpair-policy@challenger), "
        "comma-separated; each shadows the pair of its contract, or every pair. "
        "Folders: MODEL_DIR/challengers/*/.",
    )
    max_models: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Most models held at once (the default, per-pair models, challengers).",
    )
    shadow_fraction: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of answered states a challenger also sees (after the answer)."
    )
    shadow_queue: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Batches waiting for the challenger at most; beyond, shed and counted.",
    )
    shadow_stream: str = Field(
        "", description="Stream of each shadowed state's two actions for offline scoring (empty: off)."
    )
    shadow_maxlen: int = Field(10_000, ge=1, description="Approximate MAXLEN of SHADOW_STREAM.")
    jit: bool = Field(
        False,
        validation_alias=AliasChoices("stat_pair_rl_jit", "jit"),
        description="STAT_PAIR_RL_JIT=1/true/yes/on: compile the actor with torch.jit.script "
        "(0/false/no/off: eager).",
    )
    watch_interval_s: float = Field(1.0, gt=0, description="How often the model file is stat'ed.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads for inference.")
    max_deliveries: int = Field(
        5, ge=1, description="Deliveries after which an entry is answered internal and dead-lettered."
    )
    claim_idle_ms: int = Field(30_000, ge=100, description="Reclaim other workers' entries idle this long.")
    claim_interval_s: float = Field(5.0, gt=0, description="How often to look for entries to reclaim.")
    heartbeat_ttl_s: int = Field(15, ge=2, description="Heartbeat hash TTL; refreshed every third of it.")
    shutdown_grace_s: float = Field(10.0, gt=0, description="Time to finish the batch in hand after SIGTERM.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics, /healthz, /readyz on this port (off when unset)."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics server binds.")
    log_level: str = Field("INFO", description="Logging level.")

    @field_validator("jit", "redis_cluster", "trim_states", mode="before")
    @classmethod
    def _boolean(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in TRUE_WORDS:
                return True
            if text in FALSE_WORDS:
                return False
            raise ValueError(f"must be one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}")
        return value

    @field_validator("serve_shards")
    @classmethod
    def _shard_list(cls, value: str) -> str:
        parse_shards(value, None)  # the syntax; the bound is checked against SHARDS below
        return value

    @model_validator(mode="after")
    def _shards_fit(self) -> Settings:
        if not self.redis_cluster:
            if self.shards != 1 or self.serve_shards.strip().lower() != "all":
                raise ValueError(
                    "SHARDS and SERVE_SHARDS need REDIS_CLUSTER=1: one Redis holds the unsharded streams"
                )
            return self
        try:
            parse_shards(self.serve_shards, self.shards)
        except ValueError as exc:
            raise ValueError(f"SERVE_SHARDS={self.serve_shards!r}: {exc} (SHARDS={self.shards})") from None
        url = urlsplit(self.redis_url)
        if url.scheme.lower() == "unix":
            raise ValueError(
                "REDIS_CLUSTER=1 needs a redis:// or rediss:// REDIS_URL: cluster nodes talk TCP"
            )
        if url.path.strip("/") not in ("", "0"):
            raise ValueError(
                f"REDIS_CLUSTER=1 with database {url.path.strip('/')!r} in REDIS_URL: "
                "a Redis Cluster has database 0 only"
            )
        return self

    @property
    def served_shards(self) -> list[int]:
        """The shards this worker serves (unsharded: [0])."""
        return parse_shards(self.serve_shards, self.shards) if self.redis_cluster else [0]

    @field_validator(
        "model_path", "redis_ca_file", "metrics_port", "model_uri", "mlflow_tracking_uri", mode="before"
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("model_uri")
    @classmethod
    def _model_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Only a registry URI brings tracking/ in (never mlflow itself: that comes at the first poll).
        from tracking.registry.refs import parse_uri

        return str(parse_uri(value))

    @field_validator("pair_model_uris", "challenger_uris")
    @classmethod
    def _uri_list(cls, value: str) -> str:
        uris = [u.strip() for u in value.split(",") if u.strip()]
        if uris:
            from tracking.registry.refs import parse_uri

            uris = [str(parse_uri(u)) for u in uris]
        return ",".join(uris)

    @model_validator(mode="after")
    def _registry_named(self) -> Settings:
        if (self.pair_model_uris or self.challenger_uris) and not self.mlflow_tracking_uri:
            raise ValueError(
                "MLFLOW_TRACKING_URI must name the MLflow server that holds the registry "
                "when PAIR_MODEL_URIS or CHALLENGER_URIS is set"
            )
        return self

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("model_uri") and not value:
            raise ValueError("must name the MLflow server that holds the registry when MODEL_URI is set")
        return value

    @field_validator("model_cache_dir")
    @classmethod
    def _cache_dir(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        scheme = value.partition("://")[0].lower() if "://" in value else ""
        if scheme not in REDIS_SCHEMES:
            raise ValueError(
                "must start with redis://, rediss:// (TLS) or unix://, e.g. redis://127.0.0.1:6379/0"
            )
        if scheme == "unix" and not urlsplit(value).path:
            raise ValueError("names no socket: give its path, e.g. unix:///run/redis/redis.sock")
        if scheme != "unix":
            url = urlsplit(value)
            if not url.hostname:
                # redis-py would take localhost:6379 silently: another server than the one meant.
                raise ValueError("names no host: give one, e.g. redis://127.0.0.1:6379/0")
            try:
                url.port  # noqa: B018  # urlsplit checks the port only when asked
            except ValueError:
                raise ValueError(
                    f"has port {url.netloc.rpartition(':')[2]!r}: a port is a number from 1 to 65535"
                ) from None
            db = url.path.strip("/")
            if db and not db.isdigit():
                raise ValueError(f"names database {db!r}: a database is a number, e.g. redis://host:6379/0")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("block_ms")
    @classmethod
    def _block_ms(cls, value: int) -> int:
        if value >= REDIS_SOCKET_TIMEOUT_S * 1000:
            raise ValueError(
                f"must be below the Redis client's {REDIS_SOCKET_TIMEOUT_S:.0f} s socket timeout"
            )
        return value

    @field_validator(
        "reply_prefix",
        "states_stream",
        "group",
        "consumer",
        "results_stream",
        "dead_stream",
        "control_stream",
        "control_replies",
        "heartbeat_prefix",
        "contracts_key",
    )
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():  # an empty key or name is legal to Redis, and never what was meant
            raise ValueError("must not be empty")
        return value

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        for name in names:
            if not STRATEGY_NAME.fullmatch(name):
                raise ValueError(
                    f"strategy name {name!r} must be 1-64 letters, digits, '_' or '-', starting with a "
                    "letter or digit"
                )
        if len(set(names)) != len(names):
            raise ValueError("names a strategy twice")
        return ",".join(names)

    @model_validator(mode="after")
    def _strategy_keys_are_free(self) -> Settings:
        taken = {self.dead_stream, self.results_stream, self.control_stream, self.control_replies}
        for name in self.strategy_names:
            states, _, results = strategy_keys(self.states_stream, self.reply_prefix, name)
            if states in taken or results in taken:
                raise ValueError(
                    f"STRATEGIES: strategy {name!r} would read or write a key of the workers' own"
                )
        return self

    @property
    def strategy_names(self) -> list[str]:
        return [n for n in self.strategies.split(",") if n]

    @property
    def redis_url_masked(self) -> str:
        return mask_url(self.redis_url)

    @property
    def mlflow_tracking_uri_masked(self) -> str:
        return mask_url(self.mlflow_tracking_uri or "")


def mask_url(url: str) -> str:
    """The URL with any password (``user:pass@`` or ``?password=``) replaced by ``***``,
    for logs, status and errors. (tracking/ keeps a twin: it imports nothing of the
    project, and the worker imports nothing of the tracker.)"""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. an unclosed IPv6 bracket: show nothing rather than the secret
        return "<unparseable url>"
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"  # host as written
    query = "&".join(
        f"{k}=***" if k.lower() == "password" else f"{k}={v}" if sep else k
        for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    masked = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # urlunsplit writes unix:///s.sock as unix:/s.sock: keep the form the user wrote
    return masked.replace(":", "://", 1) if url.startswith(f"{parts.scheme}://") and not netloc else masked


def describe(exc: ValidationError) -> str:
    """One sentence per invalid setting, naming its environment variable, the
    value given (any password masked) and what is wrong; never pydantic's dump of
    every input."""
    lines = []
    for err in exc.errors(include_url=False, include_input=True):
        name = str(err["loc"][0]) if err["loc"] else ""
        var = env_name(name) if name in Settings.model_fields else (name.upper() or "configuration")
        value = err.get("input")
        shown = ""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            text = mask_url(str(value)) if name in ("redis_url", "mlflow_tracking_uri") else str(value)
            shown = f"={text[:80]!r}" if isinstance(value, str) else f"={text}"
        msg = str(err["msg"]).removeprefix("Value error, ").rstrip(".")
        if not err["loc"]:  # a rule across settings: its message names them
            lines.append(f"invalid configuration: {msg}.")
            continue
        lines.append(f"invalid configuration: {var}{shown} {msg[0].lower() + msg[1:]}.")
    return "\n".join(lines)


# Variables of the project that are not the worker's settings (the test suite's, the
# trainer's tracking): never taken for a misspelt setting.
NOT_SETTINGS = frozenset(
    {"STATPAIR_REQUIRE_SERVERS", "STATPAIR_UNLOCKED", "STATPAIR_TEST_PG_DSN", "MLFLOW_EXPERIMENT_NAME"}
)
# Prefixes only statpair's variables carry: an unknown one of these is a misspelling, however far.
OWN_PREFIXES = ("STATPAIR_", "STAT_PAIR_")


def _distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) between ``a`` and ``b``."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def misspelt_settings(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, the setting(s) it probably means: "A" or "A or B") for each environment
    variable that looks like a worker setting and is none: within an edit or two of a
    setting's name, or with statpair's own prefix. Read by the entrypoint; the settings
    model ignores them."""
    known: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else [name]
        for n in names:
            known[n.upper()] = env_name(name)
    out = []
    for var in sorted(environ):
        upper = var.upper()
        if upper in known or upper in NOT_SETTINGS or len(upper) < 5:
            continue
        distances = {k: _distance(upper, k) for k in known}
        best = min(distances.values())
        close = best <= (2 if len(upper) >= 8 else 1)
        if close or upper.startswith(OWN_PREFIXES):
            meant = sorted({known[k] for k, d in distances.items() if d == best})
            out.append((var, " or ".join(meant)))
    return out


def env_name(field_name: str) -> str:
    """The environment variable a settings field is read from."""
    alias = Settings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0]).upper()
    return field_name.upper()


def _default(name: str) -> str:
    info = Settings.model_fields[name]
    if info.default_factory is not None:
        return "host-pid" if name == "consumer" else "(computed)"
    if info.default is None:
        return "unset"
    return str(info.default).lower() if isinstance(info.default, bool) else str(info.default)


def settings_table() -> str:
    """The README's Configuration table, generated from the model (a test keeps them equal)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        rows.append(f"| `{env_name(name)}` | `{_default(name)}` | {info.description} |")
    return "\n".join(rows)


def settings_help() -> str:
    """Every setting for ``--help``: its variable, default and description."""
    out = []
    for name, info in Settings.model_fields.items():
        out.append(f"{env_name(name)} (default {_default(name)})")
        out.append(f"    {info.description}")
    return "\n".join(out)


if __name__ == "__main__":
    print(settings_table())
