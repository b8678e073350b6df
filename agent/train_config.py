"""The trainer's settings: ``TrainConfig`` (every hyper-parameter, each a ``--flag``
of ``python -m agent.train``) and the command line that builds it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.actor import DEFAULT_HIDDEN
from agent.env import PairConfig
from agent.features import NAMES
from agent.sac import SACHyper

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Train the pair-trading policy with soft actor-critic and publish it to the checkpoint "
    "the worker serves, unless the model already there scores better on the same validation paths."
)
DEFAULT_OUT = Path("models/policy.pt")  # without MODEL_DIR


# The actor's default inputs: the z-scores over three windows and their short mean, the
# 20-step momentum, the volatility ratio and autocorrelation (is the spread still mean-reverting?),
# and the position book. Dropped: the lags, which let a small actor fit one window's noise.
ROBUST_INPUTS = (
    "z60_lag0",
    "z20",
    "z120",
    "z60_mean5",
    "mom20",
    "vol_ratio",
    "autocorr60",
    "position",
    "unrealised",
    "holding",
    "cost_vol",
)


class ConfigError(ValueError):
    """Settings that do not fit together: one sentence naming the flags."""


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a training run; each is a ``--flag`` of ``python -m agent.train``."""

    episodes: int = _f(100, "training episodes")
    episode_length: int = _f(256, "steps per training episode")
    seed: int = _f(0, "seed of torch, the environments and the replay sampling")
    out: Path = field(
        default=DEFAULT_OUT,
        metadata={
            "help": "the checkpoint the worker serves: rewritten atomically by each new best of this "
            "run that scores at least as well on the validation paths as the model already there"
        },
    )
    force: bool = _f(
        False, "publish to --out even when the model already there scores better, or serves another pair"
    )
    run_dir: Path = field(
        default=Path("runs"),
        metadata={"help": "folder for this run's best.pt and final.pt (in a timestamped subfolder)"},
    )
    hidden: tuple[int, ...] = _f(DEFAULT_HIDDEN, "actor hidden layer sizes")
    critic_hidden: tuple[int, ...] = _f((128, 128), "critic hidden layer sizes")
    actor_lr: float = _f(3e-4, "actor learning rate")
    critic_lr: float = _f(3e-4, "critic learning rate")
    alpha_lr: float = _f(3e-4, "entropy temperature learning rate")
    gamma: float = _f(0.95, "discount factor")
    tau: float = _f(0.005, "Polyak averaging factor of the target critics")
    init_alpha: float = _f(0.1, "initial entropy temperature (tuned automatically)")
    batch_size: int = _f(256, "minibatch size")
    buffer_size: int = _f(200_000, "replay buffer capacity (transitions)")
    learning_starts: int = _f(2_000, "random-action steps before learning")
    updates_per_step: float = _f(1.0, "gradient updates per environment step (may be fractional)")
    reward_scale: float = _f(100.0, "multiplier of the PnL reward for learning")
    eval_every: int = _f(5, "validate every this many episodes")
    eval_episodes: int = _f(16, "validation paths (synthetic pair)")
    eval_length: int = _f(512, "steps per validation path (synthetic pair)")
    threads: int = _f(1, "torch threads")
    max_minutes: float = _f(
        15.0,
        "stop after this many minutes (0 = no limit): a guard on a busy machine; a run it stops "
        "ends at an episode that depends on the machine's speed, so it no longer repeats for its seed",
    )
    half_life: float = _f(PairConfig.half_life, "spread half-life in steps (synthetic pair)")
    sigma: float = _f(PairConfig.sigma, "spread innovation std per step (synthetic pair)")
    regime_prob: float = _f(PairConfig.regime_prob, "chance of a regime shift per step (synthetic pair)")
    cost: float = _f(PairConfig.cost, "cost per unit of position change")
    train_cost_multiplier: float = _f(
        10.0,
        "the cost charged while learning, as a multiple of --cost "
        "(above 1 discourages churn; validation uses --cost)",
    )
    risk_aversion: float = _f(
        0.0,
        "learning only: subtract this times the squared step PnL from the reward (a mean-variance "
        "reward: holding through large moves of the spread costs; validation and evaluation score the "
        "plain PnL after cost)",
    )
    csv: Path | None = field(
        default=None,
        metadata={
            "help": "train on this CSV of two price columns (and a date column) instead of the synthetic pair"
        },
    )
    columns: str | None = _f(
        None, "the CSV's two price columns, as A,B (default: its only two numeric columns)"
    )
    train_fraction: float = _f(
        0.7, "CSV rows in the training window; the rest is held out for agent.evaluate"
    )
    validation_fraction: float = _f(
        0.2,
        "the last part of the CSV training window kept out of training episodes to choose the "
        "checkpoint on (0: choose on the whole training window, in sample)",
    )
    synthetic_episodes: int = _f(
        0,
        "domain randomisation: the first this many episodes run on synthetic spreads with a random "
        "half-life, volatility, regime shifts and drift each, before the training data's episodes",
    )
    warm_start: str = _f(
        "rule",
        "rule: behaviour-clone the z-score rule (tuned on the training episodes' rows; the default rule "
        "on the synthetic pair) into the actor before SAC starts; none: start from random weights",
    )
    bc_steps: int = _f(2000, "gradient steps of the behaviour cloning (--warm-start rule)")
    bc_weight: float = _f(
        0.3,
        "keep the actor near that rule during SAC: the weight of the squared gap to it in the "
        "actor's loss, relative to |Q| (0: off)",
    )
    inputs: str = _f(
        ",".join(ROBUST_INPUTS),
        "the features the actor reads, as names of agent.features separated by commas, or all; the "
        "others keep zero weights (the served actor still takes the 28, the feature set is unchanged)",
    )
    patience: int = _f(
        0, "stop after this many validations in a row without a new best (0: run every episode)"
    )
    experiment: str = _f("statpair-sac", "MLflow experiment (MLFLOW_EXPERIMENT_NAME overrides)")
    register: str | None = _f(
        None,
        "when the run ends, register its best checkpoint as a new version of this MLflow registered "
        "model, with its held-out and the z-score rule's scores (needs MLFLOW_TRACKING_URI); "
        "promote it with python -m tracking.registry",
    )
    quiet: bool = _f(False, "no progress bar")

    def check(self) -> None:
        """Raise ``ConfigError`` for settings that cannot work together."""
        if self.out.is_dir():
            raise ConfigError(
                f"--out {self.out} is a folder: name the model file, e.g. {self.out / 'policy.pt'}"
            )
        if self.columns is not None and self.csv is None:
            raise ConfigError("--columns names the price columns of --csv FILE: give --csv too")
        if not 0.0 < self.train_fraction < 1.0:
            raise ConfigError(f"--train-fraction must be between 0 and 1, got {self.train_fraction}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"--validation-fraction must be in [0, 1), got {self.validation_fraction}")
        if self.warm_start not in ("none", "rule"):
            raise ConfigError(f"--warm-start must be none or rule, got {self.warm_start!r}")
        for name in ("synthetic_episodes", "bc_steps", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(self, name)}")
        unknown = [n for n in self.input_names() if n not in NAMES]
        if unknown:
            raise ConfigError(f"--inputs: no feature {unknown[0]!r} (the features are: {', '.join(NAMES)})")
        for name in ("risk_aversion", "bc_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a number at least 0, got {value}")
        for name in (
            "episodes",
            "episode_length",
            "eval_every",
            "eval_episodes",
            "eval_length",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    def input_names(self) -> tuple[str, ...]:
        """The features the actor reads (``--inputs``)."""
        if self.inputs.strip() == "all":
            return NAMES
        return tuple(n.strip() for n in self.inputs.split(",") if n.strip())

    def column_names(self) -> list[str] | None:
        """``--columns A,B`` as names (the price loader checks there are two, naming the file)."""
        return None if self.columns is None else [c.strip() for c in self.columns.split(",")]

    def pair(self, length: int, cost_multiplier: float = 1.0, learning: bool = False) -> PairConfig:
        """The environment's settings; ``learning``: the training episodes' (with --risk-aversion)."""
        return PairConfig(
            episode_length=length,
            half_life=self.half_life,
            sigma=self.sigma,
            regime_prob=self.regime_prob,
            cost=self.cost * cost_multiplier,
            # cost_vol (feature 27) shows the evaluated cost, however much learning charges.
            feature_cost=self.cost,
            risk_aversion=self.risk_aversion if learning else 0.0,
        )

    def hyper(self) -> SACHyper:
        """The SAC hyper-parameters: every ``SACHyper`` field this config also has."""
        ours = {f.name for f in dataclasses.fields(self)}
        return SACHyper(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(SACHyper) if f.name in ours}
        )

    def planned_updates(self, episode_steps: int | None = None) -> int:
        """Gradient updates a full run makes, at ``episode_steps`` a training episode
        (default ``episode_length``; a price file's episodes may be shorter)."""
        steps = self.episodes * (self.episode_length if episode_steps is None else episode_steps)
        return int(max(0, steps - self.learning_starts + 1) * self.updates_per_step)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 64,64, got {text!r}")
    return sizes


class _Deprecated(argparse.Action):
    """``--csv-columns``, the old spelling of ``--columns``: still accepted, not listed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        logger.warning("--csv-columns is deprecated: use --columns (agent.evaluate spells it the same)")
        setattr(namespace, self.dest, values)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.train", description=DESCRIPTION)
    hints, defaults = typing.get_type_hints(TrainConfig), TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind, text, default = hints[f.name], f.metadata["help"], getattr(defaults, f.name)
        if kind is bool:
            p.add_argument(flag, action="store_true", help=text)
        elif f.name == "out":
            # No argparse default: config_from_args tells "not given" (MODEL_DIR decides)
            # from any spelling of the flag (--out X, --out=X, an abbreviation).
            p.add_argument(
                flag,
                type=Path,
                default=None,
                metavar="PATH",
                help=f"{text} (default: $MODEL_DIR/policy.pt, or {DEFAULT_OUT} when MODEL_DIR is unset)",
            )
        elif kind == tuple[int, ...]:
            shown = ",".join(str(h) for h in default)
            p.add_argument(
                flag, type=_sizes, default=default, help=f"{text}, comma-separated (default: {shown})"
            )
        else:
            parse: Callable[[str], Any]
            if kind in (int, float, str, Path):
                parse = kind
            else:  # X | None
                parse = next(a for a in typing.get_args(kind) if a is not type(None))
            shown = "" if default is None else f" (default: {default})"
            metavar = "A,B" if f.name == "columns" else None
            p.add_argument(flag, type=parse, default=default, metavar=metavar, help=text + shown)
    p.add_argument("--csv-columns", dest="columns", action=_Deprecated, default=None, help=argparse.SUPPRESS)
    return p


def config_from_args(argv: list[str] | None = None, model_dir: str | None = None) -> TrainConfig:
    values = vars(_parser().parse_args(argv))
    if values["out"] is None:
        values["out"] = Path(model_dir) / "policy.pt" if model_dir else DEFAULT_OUT
    return TrainConfig(**values)
