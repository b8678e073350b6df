"""The SAC actor: a scriptable Gaussian policy whose tanh-squashed mean is what
the worker serves (``deterministic``) and whose samples are what training uses."""

from __future__ import annotations

import math

import torch
from torch import nn

from agent.features import STATE_DIM

__all__ = ["DEFAULT_HIDDEN", "LOG_STD_MAX", "LOG_STD_MIN", "STATE_DIM", "SACActor"]

DEFAULT_HIDDEN = (64, 64)
"""The actor's hidden layer sizes unless told otherwise: what training ships and the worker serves."""

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0


class SACActor(nn.Module):
    """Shared MLP (state_dim → hidden → … ReLU), a mean head and a log-std head.

    The clamp bounds are instance attributes listed in ``__constants__`` so that
    ``torch.jit.script`` treats them as compile-time constants (TorchScript
    cannot close over module globals).
    """

    __constants__ = ("log_std_min", "log_std_max", "state_dim", "action_dim")

    def __init__(
        self,
        state_dim: int = STATE_DIM,
        hidden: tuple[int, ...] | list[int] = DEFAULT_HIDDEN,
        action_dim: int = 1,
        log_std_min: float = LOG_STD_MIN,
        log_std_max: float = LOG_STD_MAX,
    ) -> None:
        super().__init__()
        if state_dim < 1 or action_dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError(
                f"bad actor shape: state_dim={state_dim}, hidden={tuple(hidden)}, action_dim={action_dim}"
            )
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)
        layers: list[nn.Module] = []
        width = self.state_dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.shared = nn.Sequential(*layers)
        self.mean_head = nn.Linear(width, self.action_dim)
        self.log_std_head = nn.Linear(width, self.action_dim)

    def config(self) -> dict[str, object]:
        """What is needed to rebuild this actor (stored in checkpoints)."""
        return {
            "state_dim": self.state_dim,
            "hidden": list(self.hidden),
            "action_dim": self.action_dim,
            "log_std_min": self.log_std_min,
            "log_std_max": self.log_std_max,
        }

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, log_std)``, each of shape (batch, action_dim)."""
        x = self.shared(state)
        mean = self.mean_head(x)
        log_std = self.log_std_head(x).clamp(self.log_std_min, self.log_std_max)
        return mean, log_std

    @torch.jit.export
    def deterministic(self, state: torch.Tensor) -> torch.Tensor:
        """The served action: ``tanh(mean)`` in [-1, 1], shape (batch, action_dim)."""
        mean, _ = self.forward(state)
        return torch.tanh(mean)

    def sample(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised tanh-squashed sample and its log-probability (training).

        Not in the scripted graph: ``torch.jit.script`` compiles ``forward``, the
        exported methods and what they call, and serving never samples.
        """
        mean, log_std = self.forward(state)
        std = log_std.exp()
        noise = torch.randn_like(mean)
        pre_tanh = mean + std * noise
        action = torch.tanh(pre_tanh)
        # Gaussian log-density, then the change-of-variables term for tanh,
        # written in the numerically stable form 2*(log 2 - u - softplus(-2u)).
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (
            2.0 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh))
        ).sum(-1)
        return action, log_prob
