"""Soft actor-critic (Haarnoja et al. 2018): twin Q critics with Polyak-averaged
targets, automatic entropy tuning, reparameterised tanh-squashed actions. The
actor is the served ``SACActor``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from agent.actor import DEFAULT_HIDDEN, SACActor

Reference = Callable[[torch.Tensor], torch.Tensor]  # states (n, 28) → reference actions (n, 1)


class QNetwork(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = state_dim + action_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        q: torch.Tensor = self.net(torch.cat([state, action], dim=-1))
        return q


class TwinCritic(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.q1 = QNetwork(state_dim, action_dim, hidden)
        self.q2 = QNetwork(state_dim, action_dim, hidden)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(state, action), self.q2(state, action)


@torch.no_grad()
def polyak_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    """target ← (1 − tau)·target + tau·source."""
    for s, t in zip(source.parameters(), target.parameters(), strict=True):
        t.mul_(1.0 - tau).add_(s, alpha=tau)


@dataclass(frozen=True)
class SACHyper:
    """The algorithm's hyper-parameters (``TrainConfig`` holds the same fields for the CLI)."""

    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    critic_hidden: tuple[int, ...] = (128, 128)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.95
    tau: float = 0.005
    init_alpha: float = 0.1
    target_entropy: float | None = None  # default: −action_dim
    bc_weight: float = 0.0  # weight of the squared gap to a reference policy in the actor's loss


class SAC:
    def __init__(self, state_dim: int, hp: SACHyper, action_dim: int = 1) -> None:
        self.hp = hp
        self.actor = SACActor(state_dim=state_dim, hidden=hp.hidden, action_dim=action_dim)
        self.critic = TwinCritic(state_dim, action_dim, hp.critic_hidden)
        self.critic_target = TwinCritic(state_dim, action_dim, hp.critic_hidden)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(np.log(hp.init_alpha), dtype=torch.float32, requires_grad=True)
        self.target_entropy = -float(action_dim) if hp.target_entropy is None else hp.target_entropy
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=hp.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=hp.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=hp.alpha_lr)

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.exp())

    @torch.no_grad()
    def act(self, states: np.ndarray, deterministic: bool = False) -> np.ndarray:
        x = torch.as_tensor(states, dtype=torch.float32)
        if deterministic:
            action = self.actor.deterministic(x)
        else:
            action, _ = self.actor.sample(x)
        out: np.ndarray = action.numpy()
        return out

    def update(self, batch: tuple[np.ndarray, ...], reference: Reference | None = None) -> dict[str, float]:
        """One gradient step of the critics, the actor and the temperature. With ``reference``
        and ``bc_weight`` > 0 the actor also pays ``bc_weight`` × its deterministic action's squared
        gap to the reference's (a behaviour-cloning regulariser, as in TD3+BC)."""
        s, a, r, s2, d = (torch.from_numpy(x) for x in batch)
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = self.actor.sample(s2)
            q1t, q2t = self.critic_target(s2, a2)
            target = r + self.hp.gamma * (1.0 - d) * (torch.min(q1t, q2t) - alpha * logp2.unsqueeze(-1))
        q1, q2 = self.critic(s, a)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad(set_to_none=True)
        # torch.autograd.backward is what Tensor.backward calls; it is annotated, Tensor.backward is not.
        torch.autograd.backward(critic_loss)
        self.critic_opt.step()

        self.critic.requires_grad_(False)
        new_a, logp = self.actor.sample(s)
        q_new = torch.min(*self.critic(s, new_a))
        actor_loss = (alpha * logp.unsqueeze(-1) - q_new).mean()
        bc = torch.zeros(())
        if reference is not None and self.hp.bc_weight > 0:
            # Scaled by |Q| as TD3+BC does, so the weight means the same whatever the reward scale.
            scale = q_new.abs().mean().detach().clamp(min=1e-3)
            bc = (self.actor.deterministic(s) - reference(s)).pow(2).mean()
            actor_loss = actor_loss + self.hp.bc_weight * scale * bc
        self.actor_opt.zero_grad(set_to_none=True)
        torch.autograd.backward(actor_loss)
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        torch.autograd.backward(alpha_loss)
        self.alpha_opt.step()

        polyak_update(self.critic, self.critic_target, self.hp.tau)
        return {
            "critic_loss": critic_loss.item(),
            "actor_loss": actor_loss.item(),
            "alpha": alpha.item(),
            "entropy": -logp.detach().mean().item(),
            "bc_gap": bc.item(),
        }
