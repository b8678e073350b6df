"""The actor's shape contract, scripting, and eager/JIT agreement."""

from __future__ import annotations

import pytest
import torch

from agent.actor import SACActor
from agent.compile import compile_actor


def test_forward_shapes_and_clamp() -> None:
    torch.manual_seed(0)
    actor = SACActor(state_dim=28, hidden=(32, 32))
    with torch.no_grad():
        actor.log_std_head.bias.fill_(100.0)
        mean, log_std = actor(torch.randn(5, 28))
    assert mean.shape == (5, 1) and log_std.shape == (5, 1)
    assert torch.all(log_std == 2.0)
    with torch.no_grad():
        actor.log_std_head.bias.fill_(-100.0)
        _, log_std = actor(torch.randn(5, 28))
    assert torch.all(log_std == -20.0)


def test_deterministic_is_tanh_of_mean_in_bounds() -> None:
    actor = SACActor(hidden=(16,))
    x = torch.randn(64, 28) * 50
    with torch.no_grad():
        mean, _ = actor(x)
        out = actor.deterministic(x)
    assert torch.equal(out, torch.tanh(mean))
    assert out.abs().max() <= 1.0


def test_sample_log_prob_matches_distribution() -> None:
    torch.manual_seed(1)
    actor = SACActor(hidden=(16,))
    x = torch.randn(4, 28)
    torch.manual_seed(2)
    action, log_prob = actor.sample(x)
    torch.manual_seed(2)
    mean, log_std = actor(x)
    normal = torch.distributions.Normal(mean, log_std.exp())
    u = mean + log_std.exp() * torch.randn_like(mean)
    want = (normal.log_prob(u) - torch.log(1 - torch.tanh(u).pow(2) + 1e-12)).sum(-1)
    assert torch.allclose(action, torch.tanh(u))
    assert torch.allclose(log_prob, want, atol=1e-4)


def test_bad_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="bad actor shape"):
        SACActor(state_dim=0)


def test_script_has_constants_not_globals() -> None:
    compiled = compile_actor(SACActor(hidden=(8,)), jit=True)
    assert compiled.backend == "jit" and compiled.error is None
    assert {"log_std_min", "log_std_max"} <= set(SACActor.__constants__)
    x = torch.randn(4, 28)
    with torch.inference_mode():
        assert torch.allclose(compiled.fn(x), compiled.module.deterministic(x))


@pytest.mark.parametrize("batch", [1, 8, 32, 128])
def test_scripted_matches_eager(batch: int) -> None:
    torch.manual_seed(batch)
    actor = SACActor()
    compiled = compile_actor(actor, jit=True)
    x = torch.randn(batch, 28)
    with torch.inference_mode():
        assert torch.allclose(compiled.fn(x), actor.deterministic(x), atol=1e-6, rtol=0)


def test_scripting_emits_no_warning(recwarn: pytest.WarningsRecorder) -> None:
    compile_actor(SACActor(hidden=(8,)), jit=True)
    assert not [w for w in recwarn if "jit" in str(w.message).lower()]


def test_fallback_to_eager_when_scripting_fails(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: torch.nn.Module) -> torch.nn.Module:
        raise RuntimeError("simulated TorchScript failure")

    actor = SACActor(hidden=(8,))
    compiled = compile_actor(actor, jit=True, scripter=broken)
    assert compiled.backend == "eager" and not compiled.jit_compiled
    assert "simulated TorchScript failure" in (compiled.error or "")
    assert "falling back to eager" in caplog.text
    x = torch.randn(3, 28)
    with torch.inference_mode():
        assert torch.equal(compiled.fn(x), actor.deterministic(x))


def test_fallback_when_scripted_output_differs() -> None:
    class Wrong(torch.nn.Module):
        def deterministic(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 1) + 0.5

    torch.manual_seed(0)
    compiled = compile_actor(
        SACActor(hidden=(8,)), jit=True, check_states=torch.randn(4, 28), scripter=lambda m: Wrong()
    )
    assert compiled.backend == "eager"
    assert "differs from eager" in (compiled.error or "")


def test_jit_off_is_eager() -> None:
    compiled = compile_actor(SACActor(hidden=(8,)), jit=False)
    assert compiled.backend == "eager" and compiled.error is None
