"""Training never silently downgrades what is served: the serving file is replaced
only by a model scoring at least as well as the one there (or with --force), a run
too short to learn says so, and --out wins over MODEL_DIR in every spelling."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from agent.actor import SACActor
from agent.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from agent.contract import PairContract
from agent.train import TrainConfig, chosen_at, config_from_args, main, summary, train
from tests.conftest import CONTRACT

REAL = Path(__file__).parent / "data" / "sp500_nasdaq_2017_2018.csv"


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def short(tmp_path: Path, **kw: Any) -> TrainConfig:
    """One 40-step episode, 21 gradient updates: far too little to learn anything."""
    values: dict[str, Any] = {
        "episodes": 1,
        "episode_length": 40,
        "learning_starts": 20,
        "batch_size": 8,
        "eval_every": 1,
        "eval_episodes": 8,
        "eval_length": 40,
        "hidden": (16, 16),
        "critic_hidden": (16, 16),
        "warm_start": "none",  # from random weights: these runs are meant to learn nothing
        "bc_weight": 0.0,
        "out": tmp_path / "models" / "policy.pt",
        "run_dir": tmp_path / "runs",
        "quiet": True,
    }
    values.update(kw)
    return TrainConfig(**values)


def handmade(path: Path, sign: float) -> Path:
    """A served model whose action is tanh(-3·sign·z60): sign +1 trades mean reversion
    (scores well on the synthetic pair), sign -1 bets against it (scores badly)."""
    actor = SACActor(hidden=(2,))
    with torch.no_grad():
        for p in actor.parameters():
            p.zero_()
        actor.shared[0].weight[0, 0], actor.shared[0].weight[1, 0] = 1.0, -1.0  # relu(z), relu(-z)
        actor.mean_head.weight[0, 0], actor.mean_head.weight[0, 1] = -3.0 * sign, 3.0 * sign
    return save_checkpoint(
        actor, path, {"created_utc": "2026-01-01T00:00:00+00:00", "who": "incumbent"}, contract=CONTRACT
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).actor.state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_strong_incumbent_is_kept_by_a_bad_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = short(tmp_path)
    before = handmade(cfg.out, sign=1.0).read_bytes()
    with caplog.at_level(logging.INFO, logger="agent"):
        result = train(cfg, progress=False)
    assert cfg.out.read_bytes() == before  # untouched
    assert result.incumbent_sharpe is not None and result.incumbent_sharpe > 1.0
    assert result.best_sharpe < result.incumbent_sharpe and not result.published
    assert result.best_path.exists() and result.final_path.exists()  # kept in the run folder
    assert "not published" in result.publish_note and "--force" in result.publish_note
    assert f"{result.incumbent_sharpe:.2f}" in result.publish_note
    assert "not published" in caplog.text and "only a model scoring at least that" in caplog.text


def test_force_replaces_a_strong_incumbent(tmp_path: Path) -> None:
    cfg = short(tmp_path, force=True)
    handmade(cfg.out, sign=1.0)
    result = train(cfg, progress=False)
    assert result.published and result.best_sharpe < (result.incumbent_sharpe or 0.0)
    assert same(weights(cfg.out), weights(result.best_path))
    assert "with --force" in result.publish_note and "below" in result.publish_note


def test_a_better_run_replaces_a_weak_incumbent(tmp_path: Path) -> None:
    cfg = short(tmp_path)
    handmade(cfg.out, sign=-1.0)
    result = train(cfg, progress=False)
    assert result.incumbent_sharpe is not None and result.incumbent_sharpe < -1.0
    assert result.published and result.best_sharpe >= result.incumbent_sharpe
    assert same(weights(cfg.out), weights(result.best_path))
    meta = load_checkpoint(cfg.out).metadata
    assert meta["incumbent_eval_sharpe"] == pytest.approx(result.incumbent_sharpe)
    assert meta["eval_score"] == pytest.approx(result.best_sharpe)
    assert f"at least the {result.incumbent_sharpe:.2f} of the model it replaced" in result.publish_note


def _old_format(path: Path) -> None:
    torch.save({"format": FORMAT, "version": 0, "config": {}, "state_dict": {}}, path)


def _other_state_dim(path: Path) -> None:
    save_checkpoint(SACActor(state_dim=5, hidden=(4,)), path, contract=CONTRACT)


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x80\x02 not a checkpoint")


@pytest.mark.parametrize("spoil", [_old_format, _other_state_dim, _corrupt])
def test_an_unloadable_incumbent_is_treated_as_absent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spoil: Any
) -> None:
    cfg = short(tmp_path, episodes=1, learning_starts=1000)
    cfg.out.parent.mkdir(parents=True)
    spoil(cfg.out)
    result = train(cfg, progress=False)
    assert result.incumbent_sharpe is None and result.published
    assert load_checkpoint(cfg.out, state_dim=28).metadata["eval_score"] == pytest.approx(result.best_sharpe)
    assert (
        f"the model at {cfg.out} cannot be loaded" in caplog.text and "treating it as absent" in caplog.text
    )


def test_an_incumbent_does_not_change_the_run(tmp_path: Path) -> None:
    """Loading the incumbent draws from torch's RNG; the seeded run must not notice."""
    alone = train(short(tmp_path / "a"), progress=False)
    cfg = short(tmp_path / "b")
    handmade(cfg.out, sign=1.0)
    beside = train(cfg, progress=False)
    assert alone.updates == beside.updates > 0
    assert same(weights(alone.final_path), weights(beside.final_path))


def test_a_run_too_short_to_learn_warns(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "model_dir"))
    out = tmp_path / "elsewhere" / "p.pt"
    argv = ["--episodes", "2", "--episode-length", "30", "--learning-starts", "100", "--batch-size", "8"]
    argv += ["--eval-episodes", "1", "--eval-length", "20", "--hidden", "8,8", "--critic-hidden", "8,8"]
    argv += [f"--out={out}", "--run-dir", str(tmp_path / "runs"), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "60 environment steps, 0 gradient updates" in printed
    assert "warning: too short to learn" in printed and "--learning-starts 100" in printed
    assert "warning: not one gradient step in 60 environment steps" in printed
    assert caplog.text.count("too short to learn") == 1
    assert "this model is the behaviour clone of the rule, SAC did not train it" in caplog.text
    assert out.exists() and not (tmp_path / "model_dir").exists()  # --out= beat MODEL_DIR


def test_a_run_that_learns_does_not_warn(tmp_path: Path) -> None:
    result = train(short(tmp_path), progress=False)
    assert result.updates == 21 and result.warnings == []


@pytest.mark.parametrize("argv", [["--out", "o.pt"], ["--out=o.pt"], ["--ou=o.pt"]])
def test_out_beats_model_dir_in_every_spelling(tmp_path: Path, argv: list[str]) -> None:
    assert config_from_args(argv, model_dir=str(tmp_path)).out == Path("o.pt")
    assert config_from_args(argv, model_dir=None).out == Path("o.pt")


def test_out_defaults_to_model_dir_then_models() -> None:
    assert config_from_args([], model_dir="/srv/m").out == Path("/srv/m/policy.pt")
    assert config_from_args([], model_dir=None).out == Path("models/policy.pt")
    assert config_from_args([], model_dir="").out == Path("models/policy.pt")


def test_an_unwritable_out_or_run_dir_stops_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for flag in ("--out", "--run-dir"):
        target = blocker / "sub" / ("p.pt" if flag == "--out" else "runs")
        argv = ["--episodes", "1", "--quiet", flag, str(target)]
        if flag == "--run-dir":
            argv += ["--out", str(tmp_path / "p.pt")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag}: cannot write in ") and "Traceback" not in err


def test_a_model_of_another_pair_is_not_replaced_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replacing another pair's model would end that pair's serving: the run stops before
    training (nothing written, no run folder) unless --force, which replaces it unscored."""
    other = PairContract.model_validate(
        {**CONTRACT.model_dump(), "instruments": {"leg_a": "KO", "leg_b": "PEP"}}
    )
    cfg = short(tmp_path)
    handmade(cfg.out, sign=1.0)
    before = save_checkpoint(
        load_checkpoint(cfg.out).actor, cfg.out, {"who": "KO/PEP"}, contract=other
    ).read_bytes()
    argv = ["--episodes", "1", "--quiet", "--out", str(cfg.out), "--run-dir", str(cfg.run_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {cfg.out} holds the model of KO/PEP (contract {other.id})"), err
    assert "--force" in err and "Traceback" not in err
    assert cfg.out.read_bytes() == before and not cfg.run_dir.exists()
    result = train(short(tmp_path, force=True), progress=False)
    assert result.published and result.incumbent_sharpe is None
    assert load_checkpoint(cfg.out).contract == CONTRACT


def test_a_synthetic_model_gives_way_to_a_real_pair_and_the_same_pair_is_scored(tmp_path: Path) -> None:
    """The demo's synthetic model at --out (the README's next step trains a real pair there)
    is replaced unscored; a model of the same pair on other rows (another hedge ratio, so
    another contract) is scored on this run's validation window as usual."""
    cfg = short(tmp_path, csv=REAL)
    handmade(cfg.out, sign=1.0)  # synthetic: its contract names no legs
    first = train(cfg, progress=False)
    assert first.published and first.incumbent_sharpe is None
    assert load_checkpoint(cfg.out).contract.pair == "SP500/NASDAQ"
    fewer = tmp_path / "fewer.csv"
    fewer.write_text("\n".join(REAL.read_text().splitlines()[:300]) + "\n")
    again = train(short(tmp_path, csv=fewer, run_dir=tmp_path / "runs2"), progress=False)
    assert load_checkpoint(first.best_path).contract.id != load_checkpoint(again.best_path).contract.id
    assert again.incumbent_sharpe is not None  # scored, not refused


def test_an_out_that_is_a_folder_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was a warning ('cannot be loaded … treating it as absent'), then a traceback at the first save."""
    folder = tmp_path / "models"
    folder.mkdir()
    assert main(["--episodes", "1", "--quiet", "--out", str(folder), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: --out {folder} is a folder: name the model file, e.g. {folder / 'policy.pt'}"
    )
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_the_summary_says_when_the_clone_of_the_rule_was_chosen(tmp_path: Path) -> None:
    """A run whose SAC never beat its warm start publishes the behaviour clone: the summary
    says so (it used to say only 'best validation Sharpe', as if SAC had earned it)."""
    cfg = short(tmp_path, warm_start="rule", learning_starts=10_000)  # no gradient step: SAC = the clone
    result = train(cfg, progress=False)
    assert result.updates == 0
    assert (
        "; chosen: the behaviour clone of the rule (episode 0): no SAC checkpoint validated better"
        in (summary(result).splitlines()[0])
    )
    later = [
        {"episode": 0, "eval_sharpe": 0.5},
        {"episode": 5, "eval_sharpe": 0.9},
        {"episode": 10, "eval_sharpe": 0.9},
    ]
    assert (
        chosen_at(replace(result, history=later)) == "; chosen at episode 5"
    )  # the first of equals, as kept
