"""EBT: predictions by gradient descent on a learned energy: energy non-increasing for a small
step, adaptive step counts from an energy threshold, and training through the unrolled steps
(second-order gradients, checked against finite differences)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.plugins.ebt import EBTHeadConfig
from genloom.testing import build, check_decoder, check_head, check_model_config, tiny_model
from genloom.toolkit.recurrent import greedy_matches_recomputation

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "ebt.yaml"
SMALL = ["backbone.d_model=16", "backbone.n_layers=1", "backbone.n_heads=2", "head.energy_hidden=16"]


def head(**fields):
    model, _ = build("head", {"name": "ebt", "energy_hidden": 16, **fields}, {"vocab_size": 11, "d_model": 8})
    return model.double()


def context(batch=2, length=5, seed=0):
    return torch.randn(batch, length, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_energy_never_increases_along_the_descent_for_a_small_step():
    h = head(step_size=0.05)
    c = context()
    y = torch.zeros(2, 5, 11, dtype=torch.float64, requires_grad=True)
    energies = []
    for _ in range(12):
        E = h.energy(c, y)
        energies.append(E.detach())
        (grad,) = torch.autograd.grad(E.sum(), y)
        y = (y - h.step_size * grad).detach().requires_grad_(True)
    energies = torch.stack(energies)  # (steps, B, L): per position
    assert bool((energies[1:] <= energies[:-1] + 1e-12).all())
    assert float((energies[0] - energies[-1]).min()) > 0  # and it does descend at every position
    # the head's own prediction follows the same update
    assert torch.allclose(h.predict(c, 12, second_order=False), y.detach(), atol=1e-12)


def test_steps_adapt_to_an_energy_threshold():
    c = context()
    used = {}
    for threshold in (0.0, 1e-4, 1e-2):
        h = head(step_size=0.05, energy_threshold=threshold, max_steps=40).eval()
        h(c)
        used[threshold] = h.last_steps
    assert used[0.0] == 40 and used[1e-2] <= used[1e-4] <= 40 and used[1e-2] < 40


def _loss(h, c, targets):
    return torch.nn.functional.cross_entropy(h(c).flatten(0, 1), targets.flatten())


def test_training_backpropagates_through_the_unrolled_optimisation():
    """Second-order gradients: the loss reaches the energy MLP and the step size through the steps,
    and d loss / d step agrees with a finite difference (float64)."""
    h = head(steps=3, step_size=0.5).train()
    c = context()
    targets = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
    _loss(h, c, targets).backward()
    assert h.energy_net[0].weight.grad.abs().sum() > 0 and h.raw_step.grad.abs() > 0
    eps = 1e-6
    with torch.no_grad():
        h.raw_step += eps
    with torch.enable_grad():
        up = _loss(h, c, targets).item()
    with torch.no_grad():
        h.raw_step -= 2 * eps
    with torch.enable_grad():
        down = _loss(h, c, targets).item()
    assert abs((up - down) / (2 * eps) - h.raw_step.grad.item()) < 1e-6


def test_first_order_steps_cut_the_energy_out_of_training():
    """Broken variant: detaching each step (no second-order graph) leaves the energy MLP without
    any gradient from the loss."""
    h = head(steps=3).train()
    c = context()
    y = h.predict(c, 3, second_order=False)
    torch.nn.functional.cross_entropy(y.flatten(0, 1), torch.zeros(10, dtype=torch.long)).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in h.energy_net.parameters())


def test_head_contract_and_config_errors():
    check_head({"name": "ebt", "energy_hidden": 16}, vocab_size=13, d_model=8)
    with pytest.raises(ValueError, match="step_size"):
        EBTHeadConfig(step_size=0)
    with pytest.raises(ValueError, match="energy_threshold"):
        EBTHeadConfig(energy_threshold=-1.0)


def test_shipped_config_trains_and_decoders_run_under_inference_mode():
    torch.manual_seed(0)
    built = check_model_config(CONFIG, SMALL, batch={"ids": torch.randint(0, 256, (2, 17))})
    built = tiny_model(CONFIG, SMALL)
    built.model.double()
    greedy_matches_recomputation(built, [[100, 101, 102, 103], [50, 51]], max_new_tokens=4)
    check_decoder(built, {"name": "sampling"}, max_new_tokens=3)
    assert 1 <= built.model.head.last_steps <= 16
