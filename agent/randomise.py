"""Domain randomisation: synthetic spreads whose half-life, volatility and regime shifts are
drawn afresh for every episode, half of them with a random-walk part (a pair whose relationship
drifts, as real ones do), so a policy pre-trained on them has seen more than one market."""

from __future__ import annotations

import math

import numpy as np

from agent.env import PairConfig, PathSource, ou_spread

HALF_LIFE = (3.0, 60.0)  # steps, drawn log-uniformly
SIGMA = (0.004, 0.03)  # innovation std per step, drawn log-uniformly
REGIME_PROB = (0.0, 0.01)  # chance of a regime shift per step, drawn uniformly
DRIFT_SHARE = 0.5  # share of episodes with a random-walk part
DRIFT = (0.05, 0.5)  # its innovation std, as a multiple of the OU part's, drawn uniformly


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def randomised_spreads() -> PathSource:
    """A path source drawing a new synthetic market for every path."""

    def draw(rng: np.random.Generator, n: int) -> np.ndarray:
        config = PairConfig(
            half_life=_log_uniform(rng, *HALF_LIFE),
            sigma=_log_uniform(rng, *SIGMA),
            regime_prob=float(rng.uniform(*REGIME_PROB)),
        )
        path = ou_spread(config, rng, n)
        if rng.random() < DRIFT_SHARE:
            path = path + np.cumsum(rng.normal(0.0, config.sigma * rng.uniform(*DRIFT), n))
        return path

    return draw
