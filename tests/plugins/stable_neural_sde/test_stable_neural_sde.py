"""Stable neural SDEs: the diffusion has the prescribed structure (additive for Langevin, sigma(t) z
for linear noise), geometric paths simulated in log space never change sign, and irregular or
missing observations enter through the interpolated control path."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.stable_neural_sde import StableSdeConfig
from genloom.plugins.stable_neural_sde.model import StableSde, control_path
from genloom.testing import tiny_model


def _sde(kind, d=4):
    torch.manual_seed(0)
    return StableSde(StableSdeConfig(kind=kind, d_model=d, hidden=8, horizon=3)).double()


def test_langevin_noise_is_additive_and_linear_noise_is_sigma_times_z():
    t = torch.tensor(0.7, dtype=torch.float64)
    z1, z2 = torch.randn(5, 4, dtype=torch.float64), 10 * torch.randn(5, 4, dtype=torch.float64)
    langevin = _sde("langevin").diffusion
    assert torch.equal(langevin(t, z1), langevin(t, z2))  # independent of z
    linear = _sde("linear-noise").diffusion
    sigma = linear.sigma(t, z1)
    assert torch.equal(linear(t, z1), sigma * z1) and torch.equal(linear(t, z2), linear.sigma(t, z2) * z2)
    assert (sigma > 0).all() and torch.equal(sigma[0], sigma[1])  # sigma depends on t only


def test_geometric_paths_in_log_space_never_change_sign():
    sde = _sde("geometric")
    with torch.no_grad():
        sde.diffusion.net[-1].bias.fill_(30.0)  # very large noise: sigma ~ 3
        z0 = torch.rand(64, 4, dtype=torch.float64) + 0.01
        paths = sde.integrate(z0, torch.randn(64, 50, 4, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert (paths > 0).all()
    # the broken variant: the same SDE integrated by Euler-Maruyama in linear space crosses zero
    z, crossed = z0.clone(), torch.zeros(64, 4, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        sigma = sde.diffusion.sigma(torch.tensor(0.0), z)
        z = z + sigma * z * torch.randn(z.shape, generator=generator, dtype=z.dtype) * sde.dt ** 0.5
        crossed |= z < 0
    assert crossed.any()


def test_control_path_interpolates_irregular_and_missing_observations():
    times = torch.tensor([0.0, 0.5, 2.0, 3.0], dtype=torch.float64)
    values = torch.tensor([[[0.0], [1.0], [4.0], [100.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])  # the last value is missing
    grid = torch.tensor([0.0, 0.25, 0.5, 1.25, 2.0, 3.0, 4.0], dtype=torch.float64)
    path = control_path(times, values, mask, grid)[0, :, 0]
    assert torch.allclose(path, torch.tensor([0.0, 0.5, 1.0, 2.5, 4.0, 4.0, 4.0], dtype=torch.float64))
    # the backbone uses it for tokens marked invalid: a missing step's value does not matter
    sde = _sde("langevin").eval()
    h = torch.randn(2, 6, 4, dtype=torch.float64)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[:, 3] = False
    other = h.clone()
    other[:, 3] = 1e3
    torch.manual_seed(1)
    a = sde(h, valid=valid)
    torch.manual_seed(1)
    b = sde(other, valid=valid)
    assert torch.equal(a, b) and a.shape == (2, 3, 4)


@pytest.mark.parametrize("kind", ["langevin", "linear-noise", "geometric"])
def test_every_class_forecasts_through_the_registry(kind):
    model = tiny_model(base={
        "tokenizer": {"name": "time-step", "horizon": 3},
        "head": {"name": "forecast", "lookback": 2, "horizon": 2},
        "backbone": {"name": "stable-sde", "kind": kind, "d_model": 8, "hidden": 16, "horizon": 3, "eval_paths": 2},
        "objective": {"name": "mse"},
    }).model
    out = model.loss({"x": torch.randn(4, 10, 2), "y": torch.randn(4, 3, 2)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.eval().objective.predict(model, torch.randn(4, 10, 2)).shape == (4, 3, 2)


def test_runnable_config_assembles_and_trains_a_batch():
    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "stable-neural-sde.yaml")
    assert built.model.backbone.kind == "linear-noise"
