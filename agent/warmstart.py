"""Starting the policy from the z-score rule: the rule as a torch function of the state (the
reference of SAC's behaviour-cloning regulariser), and behaviour cloning of the actor onto it
from states of the training window, before SAC takes over."""

from __future__ import annotations

import logging

import numpy as np
import torch

from agent.actor import SACActor
from agent.baselines import POSITION, Z_FEATURE, RuleParams, zscore_rule
from agent.env import PairConfig, PairTradingEnv, PathSource
from agent.features import NAMES
from agent.sac import Reference

logger = logging.getLogger(__name__)

CLONE_TARGET = 0.95  # tanh never reaches ±1: cloning aims a little inside it


def restrict_inputs(actor: SACActor, keep: tuple[str, ...]) -> int:
    """Zero the actor's first-layer weights of every feature not in ``keep`` and hold them at zero
    (their gradients are zeroed, so Adam never moves them); return how many features are dropped."""
    dropped = [i for i, name in enumerate(NAMES) if name not in keep]
    if not dropped:
        return 0
    first = next(m for m in actor.shared if isinstance(m, torch.nn.Linear))
    mask = torch.ones_like(first.weight)
    mask[:, dropped] = 0.0
    with torch.no_grad():
        first.weight.mul_(mask)
    # torch types register_hook loosely; the hook keeps the dropped columns' gradients at zero.
    first.weight.register_hook(lambda grad: grad * mask)  # type: ignore[no-untyped-call]
    return len(dropped)


def rule_reference(params: RuleParams) -> Reference:
    """The rule's answer to a batch of states as ``zscore_rule`` gives it, as a column (n, 1)."""
    params.check()
    zi = Z_FEATURE[params.lookback]

    def reference(states: torch.Tensor) -> torch.Tensor:
        z, pos = states[:, zi], states[:, POSITION]
        out = torch.where(z.abs() < params.exit, torch.zeros_like(pos), pos)
        out = torch.where(z > params.entry, -torch.ones_like(pos), out)
        out = torch.where(z < -params.entry, torch.ones_like(pos), out)
        return out.unsqueeze(-1)

    return reference


def rule_states(
    params: RuleParams, source: PathSource, config: PairConfig, episodes: int, rng: np.random.Generator
) -> np.ndarray:
    """States the rule visits on ``episodes`` training episodes, plus the same states at random
    positions (so the clone also learns what the rule does from a position it would not hold)."""
    env = PairTradingEnv(config, source=source)
    rule = zscore_rule(params.entry, params.exit, params.lookback)
    seen: list[np.ndarray] = []
    for _ in range(episodes):
        state = env.reset(int(rng.integers(0, 2**31 - 1)))
        done = False
        while not done:
            seen.append(state)
            state, _, done, _ = env.step(float(rule(state[None, :])[0]))
    states = np.stack(seen)
    jittered = states.copy()
    jittered[:, POSITION] = rng.uniform(-1.0, 1.0, len(states))
    return np.concatenate([states, jittered]).astype(np.float32)


def behaviour_clone(
    actor: SACActor,
    states: np.ndarray,
    params: RuleParams,
    steps: int,
    rng: np.random.Generator,
    batch: int = 256,
    lr: float = 1e-3,
) -> float:
    """Fit the actor's deterministic action to the rule's on ``states`` (MSE, Adam); return the last loss."""
    reference = rule_reference(params)
    x = torch.from_numpy(states)
    target = (reference(x) * CLONE_TARGET).detach()
    opt = torch.optim.Adam(actor.parameters(), lr=lr)
    last = 0.0
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(x), size=batch))
        loss = (actor.deterministic(x[idx]) - target[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        opt.step()
        last = loss.item()
    with torch.no_grad():
        agree = float(((actor.deterministic(x) - target).abs() < 0.5).float().mean())
    logger.info(
        "behaviour-cloned the rule (%s) on %d states: loss %.4f, %.1f%% within 0.5 of it",
        params.label(),
        len(x),
        last,
        100 * agree,
    )
    return last
