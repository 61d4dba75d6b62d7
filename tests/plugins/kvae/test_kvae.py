"""Koopman VAE: A is the least-squares solution of Z_{t+1} = Z_t A over the batch, and the spectral
penalty is zero for a stable A and positive (and pushed down by its gradient) otherwise."""

import math
from pathlib import Path

import torch

from genloom.plugins.kvae.model import koopman_matrix, predictive_loss, spectral_penalty
from genloom.testing import tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "kvae.yaml"


def test_koopman_matrix_is_the_least_squares_solution_over_the_batch():
    torch.manual_seed(0)
    latents = torch.randn(6, 10, 4, dtype=torch.float64)
    past, future = latents[:, :-1].reshape(-1, 4), latents[:, 1:].reshape(-1, 4)
    reference = torch.linalg.lstsq(past, future).solution
    assert (koopman_matrix(latents) - reference).abs().max() < 1e-10
    assert (koopman_matrix(latents, ridge=1e-6) - reference).abs().max() < 1e-5
    # optimal: any perturbation, or the broken reversed regression Z_t = Z_{t+1} B, predicts worse
    best = predictive_loss(latents, reference)
    assert predictive_loss(latents, reference + 1e-3 * torch.randn(4, 4, dtype=torch.float64)) > best
    reversed_fit = torch.linalg.lstsq(future, past).solution
    assert predictive_loss(latents, reversed_fit) > best + 1e-3


def test_linear_latent_dynamics_are_recovered_exactly():
    angle = 0.3
    a = 0.95 * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    z = [torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))]
    for _ in range(7):
        z.append(z[-1] @ a)
    assert (koopman_matrix(torch.stack(z, 1)) - a).abs().max() < 1e-10


def test_spectral_penalty_is_zero_for_a_stable_matrix_and_positive_otherwise():
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    assert spectral_penalty(0.9 * rotation) == 0
    assert spectral_penalty(1.0 * rotation) == 0
    unstable = (1.2 * rotation).requires_grad_(True)
    penalty = spectral_penalty(unstable)
    assert abs(penalty.item() - 2 * 0.2 ** 2) < 1e-10  # two eigenvalues of modulus 1.2
    penalty.backward()
    with torch.no_grad():
        assert spectral_penalty(unstable - 0.1 * unstable.grad) < penalty  # its gradient shrinks the moduli
    assert spectral_penalty(torch.diag(torch.tensor([0.5, 1.5], dtype=torch.float64)), max_modulus=2.0) == 0


def test_training_lowers_the_loss_and_generation_follows_the_koopman_map():
    torch.manual_seed(0)
    built = tiny_model(CONFIG, ["data.lookback=12", "backbone.hidden=16", "backbone.d_model=16"], data=True)
    model, data = built.model, built.data
    x, _ = data.load("train").tensors()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        out = model.loss({"x": x[:32]})
        first = first if first is not None else float(out["loss"])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert float(model.loss({"x": x[:32]})["loss"]) < first
    samples = model.objective.generate(model, num_samples=3, length=12, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 12, 1) and torch.isfinite(samples).all()


def test_runnable_config_assembles_and_trains_a_batch():
    from genloom.testing import check_model_config

    built = check_model_config(CONFIG)
    assert built.data.info["name"] == "elnino"
