"""The parts of the benchmarks that need no Redis: the answers' tally and the
result built from it, the workers' environment read back by the worker's own
settings, the scenarios the flags choose, the argument errors, and the size the
actor benchmark times."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

import bench.actor
from agent.actor import SACActor
from agent.features import STATE_DIM
from bench.cli import main
from bench.e2e.cli import add_arguments
from bench.e2e.result import Result, tally
from bench.e2e.scenarios import DEFAULT_SCENARIOS, Scenario, scenarios_from
from bench.e2e.workers import Keys, Workers
from worker.settings import Settings


def answer(cid: str, status: bytes = b"ok", batch: int = 4) -> dict[bytes, bytes]:
    return {
        b"id": cid.encode(),
        b"status": status,
        b"queue_ms": b"1.5",
        b"infer_ms": b"0.2",
        b"latency_ms": b"0.3",
        b"batch_size": str(batch).encode(),
    }


def test_tally_counts_each_id_once_and_skips_warmup_answers() -> None:
    sent_ns = 1_000_000_000
    rows = [
        (sent_ns + 2_000_000, answer(f"m0:0:{sent_ns}")),
        (sent_ns + 4_000_000, answer(f"m0:1:{sent_ns}", status=b"internal")),
        (sent_ns + 5_000_000, answer(f"m0:0:{sent_ns}")),  # a duplicate
        (sent_ns + 6_000_000, answer(f"w0:7:{sent_ns}")),  # a late warm-up answer
    ]
    t = tally(rows, "m")
    assert t.received == 2 and t.errors == 2
    assert t.e2e_ms == [2.0, 4.0]
    assert (t.first_read_ns, t.last_read_ns) == (sent_ns + 2_000_000, sent_ns + 4_000_000)
    result = Result.of(Scenario("x"), t, sent=2, wall_s=1.0, throughput=2.0, cpu_s={})
    assert not result.exactly_once
    assert result.e2e_ms["p50"] == pytest.approx(3.0) and result.mean_batch == 4.0


def test_untimed_answers_have_no_e2e_and_a_clean_run_is_exactly_once() -> None:
    t = tally([(0, answer(f"m0:{i}:0")) for i in range(3)], "m")
    result = Result.of(Scenario("d", drain=True), t, sent=3, wall_s=1.0, throughput=2.0, cpu_s={})
    assert result.exactly_once and result.e2e_ms == {} and result.queue_ms["max"] == 1.5


def test_backlog_at_end_of_send_is_the_last_sample_before_sending_ended() -> None:
    t = tally([], "m")
    samples = [(0.1, 5), (0.4, 30), (0.9, 12), (1.2, 0)]
    result = Result.of(
        Scenario("r", rate=10), t, sent=0, wall_s=1.2, throughput=0.0, cpu_s={}, backlog=samples, sent_by=1.0
    )
    assert (result.backlog_max, result.backlog_end_of_send) == (30, 12)


def test_result_json_has_every_field_in_order() -> None:
    sc = Scenario("s", workers=2, count=10)
    doc = Result.of(
        sc, tally([], "m"), sent=10, wall_s=0.0, throughput=0.0, cpu_s={"workers": None}
    ).to_json()
    assert list(doc) == [
        "scenario",
        "cpu_s",
        "sent",
        "received",
        "errors",
        "exactly_once",
        "throughput",
        "wall_s",
        "e2e_ms",
        "queue_ms",
        "infer_ms",
        "latency_ms",
        "mean_batch",
        "backlog_max",
        "backlog_end_of_send",
        "worker_cpu_us",
        "redis_per_state",
        "redis_nodes",
    ]
    assert doc["scenario"]["total"] == 10 and doc["scenario"]["workers"] == 2
    assert doc["exactly_once"] is False and doc["received"] == 0


def test_worker_environment_reads_back_as_the_settings_meant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The names come from worker.settings.env_name: the worker's own settings
    model, fed the environment a benchmark worker gets, must see every value;
    an inherited model choice must not reach it."""
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("model_path", str(tmp_path / "other.pt"))
    monkeypatch.setenv("STAT_PAIR_RL_JIT", "1")
    keys = Keys("bench:abc")
    workers = Workers(
        "redis://127.0.0.1:1/0",
        tmp_path / "bench.pt",
        keys,
        Scenario("s", backend="eager", count=2_000_000, idle_spin_ms=2.0),
        tmp_path,
    )
    env = workers.env(1)
    for name in list(os.environ):
        if name not in env:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from_env: dict[str, Any] = {}  # no field given: each is read from the environment
    s = Settings(**from_env)
    assert "MODEL_DIR" not in env and "model_path" not in env
    assert s.model_path == tmp_path / "bench.pt" and s.jit is False
    assert s.redis_url == "redis://127.0.0.1:1/0"
    assert (s.states_stream, s.results_stream, s.group) == (keys.states, keys.actions, keys.group)
    assert s.reply_prefix == f"{keys.actions}:" and s.heartbeat_prefix == keys.heartbeat_prefix
    assert s.dead_stream.startswith("bench:abc:") and s.control_stream.startswith("bench:abc:")
    assert s.control_replies.startswith("bench:abc:") and s.contracts_key == keys.contracts
    assert keys.contracts.startswith("bench:abc:")
    assert s.consumer == "w1" and s.results_maxlen == 4_000_000
    assert s.idle_spin_ms == 2.0 and s.log_level == "WARNING"
    assert env["PATH"] == os.environ["PATH"]


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def test_scenarios_the_flags_choose() -> None:
    default = scenarios_from(parse("--backend", "eager"))
    assert [s.name for s in default] == [s.name for s in DEFAULT_SCENARIOS]
    assert {s.backend for s in default} == {"eager"}
    sweep = scenarios_from(parse("--rates", "200,1e3", "--duration", "2", "--workers", "2"))
    assert [(s.name, s.rate, s.total) for s in sweep] == [
        ("200/s, 2 worker(s)", 200.0, 400),
        ("1000/s, 2 worker(s)", 1000.0, 2000),
    ]
    (drain,) = scenarios_from(parse("--drain", "--count", "500", "--idle-spin-ms", "1"))
    assert drain.name == "drain, 1 worker(s), spin" and drain.drain and drain.total == 500


@pytest.mark.parametrize(
    "argv",
    [["e2e", "--hidden", "64,x"], ["e2e", "--rates", "100,-5"], ["--hidden", "0"], ["--batch-sizes", ""]],
)
def test_a_malformed_list_is_a_one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "is not a comma-separated list of positive" in err[-1] and "Traceback" not in err


def test_a_missing_model_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["e2e", "--model", str(tmp_path / "none.pt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"python -m bench e2e: error: --model {tmp_path / 'none.pt'}: no such file"
    )


def test_actor_benchmark_times_the_actors_default_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a size of its own: whatever SACActor builds by default is what is timed."""

    class SmallByDefault(SACActor):
        def __init__(self, state_dim: int = STATE_DIM, hidden: tuple[int, ...] = (8, 4)) -> None:
            super().__init__(state_dim=state_dim, hidden=hidden)

    monkeypatch.setattr(bench.actor, "SACActor", SmallByDefault)
    result = bench.actor.run([1], warmup=1, iters=2, rounds=1)
    assert result["hidden"] == [8, 4]
    assert bench.actor.run([1], hidden=(16, 16), warmup=1, iters=2, rounds=1)["hidden"] == [16, 16]
    assert "hidden=[8, 4]" in bench.actor.format_table(result).splitlines()[0]


def test_demo_feed_is_the_generators_spread_under_the_contract() -> None:
    """The demo's synthetic prices, read back through the served model's contract,
    give the generator's spread path, whatever hedge ratio and intercept it has."""
    import numpy as np

    from agent.env import PairConfig, ou_spread
    from bench.demo import synthetic_feed

    base = PairConfig().contract()
    for contract in (
        base,
        base.model_copy(update={"spread": base.spread.model_copy(update={"hedge_ratio": 0.7})}),
    ):
        a, b = synthetic_feed(contract, seed=5, n=300)
        assert len(a) == len(b) == 300 and min(a) > 0 and min(b) > 0
        expected = ou_spread(PairConfig(), np.random.default_rng(5), 300)
        assert np.allclose(contract.spread.path(a, b), expected, atol=1e-9)


def test_demo_plot_gives_the_total_a_legend_entry() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from bench.demo_report import Track, figure

    tracks = {
        p: Track(spread=[0.0, 0.1], position=[0.5, -0.5], pnl=[0.01, -0.02]) for p in ("SYN-A/SYN-B", "S2")
    }
    fig = figure(tracks)
    try:
        pnl_axes = fig.axes[2]
        labels = [t.get_text() for t in pnl_axes.get_legend().get_texts()]
        assert labels == ["SYN-A/SYN-B", "S2", "all pairs"]
        total = pnl_axes.get_lines()[-1]
        assert total.get_label() == "all pairs" and list(total.get_ydata()) == pytest.approx([0.02, -0.02])
        assert "synthetic" in fig.get_suptitle()
    finally:
        plt.close(fig)


def test_cluster_flags_choose_the_side_by_side_rows() -> None:
    from bench.e2e.cluster_cli import PAIRS_PER_SHARD, cluster_scenarios

    rows = cluster_scenarios(parse("--cluster", "3", "--workers", "1,2", "--serve", "both", "--count", "900"))
    assert [s.name for s in rows] == [
        "saturation, 1w, single",
        "saturation, 1w, cluster, 1 shard",
        "saturation, 1w, cluster, 3 shards",
        "drain, 1w, single",
        "drain, 1w, cluster, 1 shard",
        "drain, 1w, cluster, 3 shards",
        "saturation, 2w, single",
        "saturation, 2w, cluster, 1 shard",
        "saturation, 2w, cluster, 3 shards, all",
        "saturation, 2w, cluster, 3 shards, split",
        "drain, 2w, single",
        "drain, 2w, cluster, 1 shard",
        "drain, 2w, cluster, 3 shards, all",
        "drain, 2w, cluster, 3 shards, split",
    ]
    assert [(s.cluster, s.shards, s.split) for s in rows[6:10]] == [
        (False, 1, False),
        (True, 1, False),
        (True, 3, False),
        (True, 3, True),
    ]
    # The same pairs and count in every row: the rows differ only in where they run.
    assert {(s.count, s.pairs) for s in rows} == {(900, PAIRS_PER_SHARD * 3)}
    only = cluster_scenarios(parse("--cluster", "4", "--shards", "8", "--no-compare-single"))
    assert [s.name for s in only][:4] == [
        "saturation, 1w, cluster, 8 shards",
        "drain, 1w, cluster, 8 shards",
        "saturation, 2w, cluster, 8 shards, all",
        "saturation, 2w, cluster, 8 shards, split",  # both rows by default
    ]
    assert len(only) == 2 + 3 * 4 and {s.workers for s in only} == {1, 2, 3, 4}
    split = cluster_scenarios(parse("--cluster", "3", "--workers", "3", "--serve", "split"))
    assert [s.name for s in split] == [
        f"{kind}, 3w, {row}"
        for kind in ("saturation", "drain")
        for row in ("single", "cluster, 1 shard", "cluster, 3 shards, split")
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cluster", "2"], "--cluster 2: a Redis Cluster needs at least 3 primaries"),
        (["--cluster", "3", "--drain"], "--drain does not go with --cluster"),
        (["--cluster", "3", "--shards", "0"], "--shards 0: must be between 1 and 1024"),
        (["--workers", "1,2"], "--workers 1,2: one count without --cluster"),
        (["--shards", "6"], "--shards goes with --cluster N"),
        (
            ["--cluster", "3", "--act-latency", "100"],
            "--act-latency needs a positive count and --cluster-replicas",
        ),
    ],
)
def test_cluster_flags_that_do_not_fit_are_a_one_line_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["e2e", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"python -m bench e2e: error: {message}") and "\n" not in err


def test_pairs_give_every_shard_the_same_share_in_turn() -> None:
    from bench.e2e.lanes import pair_labels
    from worker.shards import shard_of

    for shards in (1, 3, 6):
        labels = pair_labels(shards, 32 * shards)
        assert len(set(labels)) == 32 * shards
        assert [shard_of(p, shards) for p in labels] == [k % shards for k in range(32 * shards)]


def test_split_workers_serve_every_shard_once() -> None:
    from bench.e2e.workers import serve_shards

    for shards, workers in ((3, 2), (6, 3), (6, 4), (2, 3)):
        sc = Scenario("s", workers=workers, cluster=True, shards=shards, split=True)
        served = [[int(s) for s in serve_shards(i, sc).split(",")] for i in range(workers)]
        flat = sorted(s for mine in served for s in mine)
        if workers <= shards:
            assert flat == list(range(shards))  # each shard by exactly one worker
        else:
            assert set(flat) == set(range(shards)) and all(len(mine) == 1 for mine in served)
    assert serve_shards(1, Scenario("s", workers=2, cluster=True, shards=3)) == "all"


def test_cluster_worker_environment_reads_back_as_the_settings_meant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys("bench:abc")
    sc = Scenario("s", workers=2, cluster=True, shards=6, split=True)
    env = Workers("redis://127.0.0.1:1", tmp_path / "m.pt", keys, sc, tmp_path).env(1)
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from_env: dict[str, Any] = {}
    s = Settings(**from_env)
    assert s.redis_cluster and s.shards == 6 and s.served_shards == [1, 3, 5]


def test_run_keys_are_found_tagged_or_not() -> None:
    from fnmatch import fnmatchcase

    from worker.shards import Streams

    keys = Keys("bench:ab12cd34")
    tagged = Streams.of(4, 6, keys.states, keys.actions, keys.dead, keys.reply_prefix, True)
    names = [keys.states, keys.heartbeat_prefix + "w0", tagged.states, tagged.results, tagged.dead]
    assert tagged.states.startswith("bench:{") and "ab12cd34" in tagged.states
    assert all(any(fnmatchcase(n, p) for p in keys.patterns) for n in names)
    other = Keys("bench:ffff0000")
    assert not any(fnmatchcase(n, p) for n in names for p in other.patterns)


def test_per_state_figures_add_up_from_the_nodes() -> None:
    from bench.e2e.redis_stats import per_state

    nodes = [
        {
            "role": "primary",
            "cpu_s": 0.5,
            "commands": {
                "xadd": {"calls": 200, "usec": 400},
                "evalsha": {"calls": 2, "usec": 300},
                "xack": {"calls": 2, "usec": 20},
                "hset": {"calls": 1, "usec": 5},
            },
        },
        {"role": "primary", "cpu_s": 0.25, "commands": {"xreadgroup": {"calls": 3, "usec": 60}}},
    ]
    ps = per_state(nodes, 100)
    assert ps["redis_cpu_us"] == ps["primary_cpu_us"] == pytest.approx(7500.0)
    assert ps["replica_cpu_us"] is None  # no replica: none, not zero
    assert list(ps["commands"]) == ["xadd", "xreadgroup", "evalsha", "xack", "other"]
    assert ps["commands"]["xadd"] == {"calls": 2.0, "us": 4.0}
    assert ps["commands"]["other"] == {"calls": 0.01, "us": 0.05}
    # XACK and one of the two XADDs a state costs ran inside EVALSHA: counted once.
    assert ps["top_level_us"] == pytest.approx(4.0 - 2.0 + 0.6 + 3.0 + 0.05)
    assert per_state(nodes, 0) == {}
    # A replica's CPU counts in the total and its own column; its commands (the
    # replicated effects) are not the primaries' command time.
    replica = {"role": "replica", "cpu_s": 0.1, "commands": {"xclaim": {"calls": 100, "usec": 300}}}
    with_replica = per_state([*nodes, replica], 100)
    assert with_replica["redis_cpu_us"] == pytest.approx(8500.0)
    assert with_replica["replica_cpu_us"] == pytest.approx(1000.0)
    assert with_replica["commands"] == ps["commands"]
