"""`python -m bench replay`: a price file's held-out rows through PriceClient and a
real worker over a real Redis equal the offline walk forward (a synthetic and a
real file); a worker serving another model or contract is caught (exit 1); bad
input is one line (exit 2). Plus the checks and their score bounds, without Redis."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import bench.replay.cli
from agent import pairs
from agent.checkpoint import Checkpoint, load_checkpoint
from agent.contract import PairContract
from agent.env import PairConfig, PairData, synthetic_prices
from agent.heldout import held_out
from agent.scoring import Trace, scores, walk_forward
from agent.train import TrainConfig, train
from bench.cli import main
from bench.replay.compare import ACTION_TOLERANCE, DEAD_BAND, SCORE_NAMES, checks, reference, replayed
from bench.replay.live import Live
from tests.conftest import CONTRACT, write_model
from tests.helpers import RecordingWorkers, gone
from worker.protocol import discrete

REAL = Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv"


def _synthetic_file(path: Path, rows: int = 400, seed: int = 7) -> Path:
    """Prices from the synthetic generator (the model's contract is its spread)."""
    a, b = synthetic_prices(PairConfig(), np.random.default_rng(seed), rows)
    path.write_text(
        "syn_a,syn_b\n" + "".join(f"{x!r},{y!r}\n" for x, y in zip(a.tolist(), b.tolist(), strict=True))
    )
    return path


def _csv_model(path: Path, seed: int = 0) -> Path:
    """A model with the contract training on the real file writes (its spread, split, sha256)."""
    return write_model(path, seed=seed, contract=PairData.from_csv(REAL).contract(cost=0.0005))


@pytest.fixture
def live_env(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/0")
    monkeypatch.setattr(bench.replay.cli, "Workers", RecordingWorkers)
    RecordingWorkers.started = []
    return redis.Redis(port=redis_server.port)


def _offline(model: Path, prices: Path, backend: str = "eager") -> tuple[Trace, Checkpoint, PairData]:
    """The replay's offline reference: the model as a worker with ``backend`` serves it."""
    ck = load_checkpoint(model)
    data = held_out(model, ck.contract, prices).data
    return reference(model, data, ck.contract.cost, backend).trace, ck, data


def _assert_cleaned_up(client: redis.Redis, before: set[Any]) -> None:
    assert len(RecordingWorkers.started) == 1 and all(gone(p) for p in RecordingWorkers.started)
    assert set(client.keys("*")) == before
    client.close()


def _replay_agrees(
    prices: Path, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[str, dict[str, Any]]:
    """Run ``bench replay`` with --json; it must exit 0 saying serving equals offline."""
    out = tmp_path / "replay.json"
    assert main(["replay", str(prices), "--model", str(model), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "agreement: serving equals offline" in text and "FAILED" not in text
    return text, json.loads(out.read_text())


@pytest.mark.integration
@pytest.mark.slow
def test_replay_of_a_synthetic_file_equals_the_offline_walk_forward(
    tmp_path: Path, live_env: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = _synthetic_file(tmp_path / "syn.csv")
    model = write_model(tmp_path / "m.pt", seed=3, contract=CONTRACT)
    before = set(live_env.keys("*"))
    text, doc = _replay_agrees(prices, model, tmp_path, capsys)
    assert "live: 1 worker (jit) over Redis (external)" in text
    offline, ck, data = _offline(model, prices, "jit")
    start, stop = data.held_out
    assert (start, stop) == (280, 400) and doc["data"]["held_out_rows"] == [280, 400]
    assert doc["ok"] and all(c["ok"] for c in doc["checks"].values())
    assert doc["served_contract_id"] == doc["contract_id"] == CONTRACT.id
    assert doc["served_model_sha256"] == [ck.sha256[:16]] and doc["worker_backends"] == ["jit"]
    # One tick a held-out row, after every row before it; the last tick only closes the last step.
    assert doc["warmed_rows"] == start and doc["ticks"] == stop - start == len(offline) + 1
    steps = doc["per_step"]
    assert (
        steps["rows"] == list(range(start, stop - 1)) and steps["offline_action"] == offline.actions.tolist()
    )
    live = np.asarray(steps["replay_action"][:-1])
    assert np.max(np.abs(live - offline.actions)) <= ACTION_TOLERANCE
    assert doc["differences"]["action"] == pytest.approx(np.max(np.abs(live - offline.actions)))
    assert np.abs(offline.actions).max() > 0.1  # the policy trades: positions and PnL are compared for real
    # The replay's scores are the scoring function's on its own positions and spread.
    pos = np.asarray(steps["replay_position"])
    assert (
        np.array_equal(pos, np.clip(live, -1, 1))
        and steps["replay_spread"] == data.spread[start:stop].tolist()
    )
    traded = np.abs(np.diff(np.concatenate([[0.0], pos])))
    pnl = pos * np.diff(steps["replay_spread"]) - ck.contract.cost * traded
    assert doc["scores"]["replay"] == scores(pnl[None, :], traded[None, :]).as_dict()
    assert doc["scores"]["offline"] == offline.scores.as_dict()
    for name in SCORE_NAMES:
        delta = doc["scores"]["replay"][name] - doc["scores"]["offline"][name]
        assert abs(delta) <= doc["differences"][f"{name}_bound"] + 1e-12
    lat = doc["latency_ms"]["price_client_tick"]
    assert lat["n"] == stop - start and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    _assert_cleaned_up(live_env, before)


@pytest.mark.integration
@pytest.mark.slow
def test_replay_of_the_real_file_with_a_challenger(
    tmp_path: Path, live_env: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    model, rival = _csv_model(tmp_path / "champion.pt"), _csv_model(tmp_path / "challenger.pt", seed=1)
    before = set(live_env.keys("*"))
    out = tmp_path / "replay.json"
    argv = ["replay", str(REAL), "--model", str(model), "--backend", "eager", "--challenger", str(rival)]
    assert main([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "held out: 151 rows, 2018-05-25 … 2018-12-31 (file lines 353–503): 150 steps" in text
    assert f"challenger: {rival}: contract" in text and "agreement: serving equals offline" in text
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["worker_backends"] == ["eager"] and doc["steps"] == 150
    # Served eagerly and read back as the wire carries it, an action is the reference's.
    assert doc["differences"]["action"] <= 1e-9 and doc["differences"]["spread"] == 0.0
    champion, _, _ = _offline(model, REAL)
    # The challenger's is agent.evaluate's walk forward (the eager actor, full-precision
    # actions); its contract is the champion's: the same rows and spread.
    rival_ck = load_checkpoint(rival)
    rows = held_out(rival, rival_ck.contract, REAL).data
    other = walk_forward(rival_ck.actor, rows, rival_ck.contract.cost)
    ch = doc["challenger"]
    assert ch["scores"] == other.scores.as_dict() and ch["notes"] == []
    sides = [
        discrete(a, DEAD_BAND) != discrete(b, DEAD_BAND)
        for a, b in zip(champion.actions, other.actions, strict=True)
    ]
    assert ch["discrete_differs_share"] == pytest.approx(np.mean(sides)) and 0 < np.mean(sides) < 1
    assert ch["mean_abs_action_diff"] == pytest.approx(np.mean(np.abs(champion.actions - other.actions)))
    _assert_cleaned_up(live_env, before)


@pytest.mark.integration
@pytest.mark.slow
def test_a_trained_model_served_with_torchscript_equals_its_offline_reference_over_a_long_walk(
    tmp_path: Path, live_env: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A behaviour-cloned actor over KO/PEP's 1735 held-out steps: there TorchScript's
    # ulp differences from the eager actor feed back through the position and grew
    # to 2e-5 (over the 1e-6 limit) when the reference was the eager actor.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prices = pairs.export("ko_pep", tmp_path / "ko_pep.csv")
    cfg = TrainConfig(
        csv=prices,
        episodes=1,
        episode_length=64,
        hidden=(16, 16),
        critic_hidden=(16, 16),
        out=tmp_path / "models" / "ko_pep.pt",
        run_dir=tmp_path / "runs",
        quiet=True,
    )
    model = train(cfg, progress=False).best_path
    before = set(live_env.keys("*"))
    text, doc = _replay_agrees(prices, model, tmp_path, capsys)
    assert "offline: agent.evaluate's walk forward of the model as the worker serves it (TorchScript)" in text
    assert doc["ok"] and doc["steps"] == 1735 and doc["worker_backends"] == ["jit"]
    assert doc["reference_backend"] == "jit"
    # The reference reads its actions as the wire carries them (9 significant digits),
    # whose rounding alone, fed back through the position, grew to 8.9e-7 here.
    assert doc["differences"]["action"] <= 1e-9 and doc["differences"]["spread"] == 0.0
    assert np.abs(doc["per_step"]["offline_action"]).max() > 0.5  # it trades
    _assert_cleaned_up(live_env, before)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    ("contract", "failed"),
    [
        (CONTRACT, ["model", "actions"]),  # the same contract, other weights
        # Features and spread built under the served contract: not the model's.
        (PairConfig(hedge_ratio=0.9).contract(), ["contract", "model", "actions", "scores"]),
    ],
    ids=["other-weights", "other-contract"],
)
def test_a_worker_serving_another_model_fails_the_replay(
    tmp_path: Path,
    live_env: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    contract: PairContract,
    failed: list[str],
) -> None:
    prices = _synthetic_file(tmp_path / "syn.csv")
    model = write_model(tmp_path / "m.pt", seed=3, contract=CONTRACT)
    wrong = write_model(tmp_path / "wrong.pt", seed=4, contract=contract)
    before = set(live_env.keys("*"))
    out = tmp_path / "replay.json"
    argv = ["replay", str(prices), "--model", str(model), "--serve", str(wrong), "--json", str(out)]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "serving does NOT equal offline on these rows" in text
    for name in failed:
        assert f"FAILED ({name}): " in text
    doc = json.loads(out.read_text())
    assert not doc["ok"] and [k for k, c in doc["checks"].items() if not c["ok"]] == failed
    assert doc["differences"]["action"] > ACTION_TOLERANCE
    assert doc["served_contract_id"] == contract.id
    _assert_cleaned_up(live_env, before)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nothere.csv", "--model", "{model}"], "nothere.csv: no such file"),
        ([str(REAL), "--model", "missing.pt"], "--model missing.pt: no such file"),
        (["{edited}", "--model", "{csv_model}"], "is not the file"),
        ([str(REAL), "--model", "{csv_model}", "--train-fraction", "0.5"], "fixes its training window"),
        ([str(REAL), "--model", "{model}", "--columns", "SP500,DOW"], "DOW"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = {
        "model": str(write_model(tmp_path / "m.pt")),
        "csv_model": str(_csv_model(tmp_path / "c.pt")),
    }
    edited = tmp_path / REAL.name  # the same columns, one row fewer: another sha256
    edited.write_text("\n".join(REAL.read_text().splitlines()[:-1]) + "\n")
    paths["edited"] = str(edited)
    assert main(["replay", *(a.format(**paths) for a in argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m bench replay: error:") and message in err[0]


# -- the checks, without Redis -------------------------------------------------------


def _perfect(tmp_path: Path) -> tuple[Trace, Checkpoint, np.ndarray, Live]:
    """What a replay that matches exactly would have seen."""
    model = write_model(tmp_path / "m.pt", seed=3, contract=CONTRACT)
    offline, ck, data = _offline(model, _synthetic_file(tmp_path / "syn.csv"))
    start, stop = data.held_out
    spread = data.spread[start:stop]
    live = Live(
        contract=ck.contract,
        actions=[*offline.actions.tolist(), 0.0],
        discrete=[*(discrete(a, DEAD_BAND) for a in offline.actions), 0],
        positions=[*offline.positions.tolist(), 0.0],
        spreads=spread.tolist(),
        model_sha256={ck.sha256[:16]},
        warmed=start,
    )
    return offline, ck, spread, live


def _verdict(offline: Trace, ck: Checkpoint, spread: np.ndarray, live: Live) -> dict[str, bool]:
    rep = replayed(live, len(offline), ck.contract.cost)
    found, _ = checks(offline, spread, live, rep, ck, ck.contract.cost)
    return {c.name: c.ok for c in found}


def test_an_exact_replay_passes_every_check_with_no_difference(tmp_path: Path) -> None:
    offline, ck, spread, live = _perfect(tmp_path)
    rep = replayed(live, len(offline), ck.contract.cost)
    assert rep is not None and rep.scores == offline.scores and np.array_equal(rep.pnl, offline.pnl)
    found, diffs = checks(offline, spread, live, rep, ck, ck.contract.cost)
    assert all(c.ok for c in found) and diffs["action"] == diffs["position"] == diffs["pnl"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_score_bounds_hold_for_positions_within_epsilon(tmp_path: Path, seed: int) -> None:
    offline, ck, spread, live = _perfect(tmp_path)
    rng = np.random.default_rng(seed)
    eps = 10.0 ** rng.uniform(-9, -6)
    moved = np.clip(offline.actions + rng.uniform(-eps, eps, len(offline)), -1, 1)
    live.actions[:-1] = live.positions[:-1] = moved.tolist()
    rep = replayed(live, len(offline), ck.contract.cost)
    assert rep is not None
    found, diffs = checks(offline, spread, live, rep, ck, ck.contract.cost)
    assert all(c.ok for c in found), [c.line for c in found if not c.ok]
    for name in SCORE_NAMES:
        assert (
            abs(getattr(rep.scores, name) - getattr(offline.scores, name)) <= diffs[f"{name}_bound"] + 1e-12
        )


def test_each_kind_of_divergence_fails_its_check(tmp_path: Path) -> None:
    offline, ck, spread, live = _perfect(tmp_path)

    def variant(**change: Any) -> Live:
        return dataclasses.replace(live, **change)  # the lists are never mutated: shared is fine

    bumped = list(live.spreads)
    bumped[50] += 1e-3  # the strategy's spread is not the model's at one row
    assert _verdict(offline, ck, spread, variant(spreads=bumped))["scores"] is False
    off = [a + 2e-6 for a in live.actions]  # actions 2e-6 apart, positions too
    v = _verdict(
        offline, ck, spread, variant(actions=off, positions=[min(1.0, p + 2e-6) for p in live.positions])
    )
    assert v["actions"] is False and v["scores"] is True  # the scores move no more than the positions allow
    assert _verdict(offline, ck, spread, variant(model_sha256={"0" * 16}))["model"] is False
    other = PairConfig(hedge_ratio=0.9).contract()
    assert _verdict(offline, ck, spread, variant(contract=other))["contract"] is False
    short = variant(actions=live.actions[:10], error="row 290: no answer from the worker within 5 s")
    assert _verdict(offline, ck, spread, short) == {"complete": False, "contract": True, "model": True}
