"""MPNP: function uncertainty comes only from the generated pseudo data (no latent variable), resampling the
pseudo data yields different functions, and predictions are invariant to permuting the context."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.mpnp.model import posterior_agreement
from genloom.testing import check_model_config, tiny_model
from genloom.toolkit.amortized import GPPrior

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "mpnp.yaml"
SMALL = ["backbone.d_model=16", "backbone.n_heads=2", "head.hidden=16", "objective.num_pseudo_sets=4", "objective.noise_dim=4"]


def _random_model(overrides=()):
    model = tiny_model(CONFIG, SMALL + list(overrides), seed=0).model.double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.fixture(scope="module")
def case():
    model = _random_model()
    x, y, _ = GPPrior().sample(3, 20, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(4, 3, 10, 4, generator=gen, dtype=torch.float64)
    x_pseudo = model.objective.pseudo_inputs(3, torch.float64, None, gen)
    return model, x, y, noise, x_pseudo


def _functions(model, x, y, noise, x_pseudo, c=8):
    return model.objective.function_samples(model, x[:, :c], y[:, :c], x[:, c:], noise=noise, x_pseudo=x_pseudo)[0]


@torch.no_grad()
def test_predictions_are_invariant_to_permuting_the_context(case):
    model, x, y, noise, x_pseudo = case
    perm = torch.cat([torch.randperm(8, generator=torch.Generator().manual_seed(2)), torch.arange(8, 20)])
    assert (_functions(model, x, y, noise, x_pseudo) - _functions(model, x[:, perm], y[:, perm], noise, x_pseudo)).abs().max() < 1e-6
    mean, _ = model.objective.predict(model, x[:, :8], y[:, :8], x[:, 8:])
    mean_p, _ = model.objective.predict(model, x[:, perm][:, :8], y[:, perm][:, :8], x[:, 8:])
    assert (mean - mean_p).abs().max() < 1e-6


@torch.no_grad()
def test_order_weighted_pooling_breaks_the_invariance(case):
    """The broken variant: the context pooled with weights that depend on the order."""
    model, x, y, noise, x_pseudo = case
    body = model.backbone
    original = body.represent
    try:
        def order_weighted(h, valid=None):
            phi = body.phi(h)
            return (phi * torch.linspace(0.5, 1.5, h.shape[1], dtype=h.dtype)[None, :, None]).mean(1), phi, valid

        body.represent = order_weighted
        perm = torch.cat([torch.randperm(8, generator=torch.Generator().manual_seed(2)), torch.arange(8, 20)])
        assert (_functions(model, x, y, noise, x_pseudo) - _functions(model, x[:, perm], y[:, perm], noise, x_pseudo)).abs().max() > 1e-4
    finally:
        body.__dict__.pop("represent", None)
        assert body.represent.__func__ is original.__func__


def _uncertainty_only_from_pseudo_data(model, x, y, noise, x_pseudo):
    """(spread with identical pseudo data, spread with resampled pseudo data) over function samples."""
    same = _functions(model, x, y, noise[:1].expand(4, -1, -1, -1).contiguous(), x_pseudo)
    different = _functions(model, x, y, noise, x_pseudo)
    return float(same.std(0).max()), float(different.std(0).mean())


@torch.no_grad()
def test_function_uncertainty_comes_only_from_the_pseudo_data(case):
    model, x, y, noise, x_pseudo = case
    same, different = _uncertainty_only_from_pseudo_data(model, x, y, noise, x_pseudo)
    assert same < 1e-12  # the same pseudo data: the same function, exactly (no latent variable)
    assert different > 1e-3  # resampled pseudo data: different functions
    # and without pseudo data the model is a deterministic conditional NP: every sample is one function
    plain = _random_model(["objective.n_pseudo=0"])
    f = plain.objective.function_samples(plain, x[:, :8], y[:, :8], x[:, 8:], generator=torch.Generator().manual_seed(3))[0]
    assert float(f.std(0).max()) < 1e-12


@torch.no_grad()
def test_a_latent_variable_breaks_the_pseudo_data_only_check(case):
    """The broken variant: a latent-variable NP (noise added to the context representation)."""
    model, x, y, noise, x_pseudo = case
    body = model.backbone
    gen = torch.Generator().manual_seed(4)
    try:
        def with_latent(h, valid=None):
            r, phi, valid = type(body).represent(body, h, valid)
            return r + 0.5 * torch.randn(r.shape, generator=gen, dtype=r.dtype), phi, valid

        body.represent = with_latent
        same, _ = _uncertainty_only_from_pseudo_data(model, x, y, noise, x_pseudo)
        assert same > 1e-3
    finally:
        body.__dict__.pop("represent", None)


def test_runnable_config_assembles_and_trains_a_batch():
    out = check_model_config(CONFIG, SMALL)
    assert out.model.objective.generator is not None


@pytest.mark.slow
def test_trained_mpnp_tracks_the_exact_gp_posterior():
    built = tiny_model(CONFIG, data=True, seed=0)
    model, data = built.model, built.data
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        x, y, _ = data.prior.sample(32, 40, generator=gen, dtype=torch.float32)
        loss = model.loss({"x": x, "y": y})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y, _ = data.tasks("test", 128)
    figures = posterior_agreement(model.eval(), data.prior, x, y, context=10, samples=16)
    print(figures)
    # measured (600 steps): 0.159 vs 0.999; sample std 0.216; Spearman 0.33
    assert figures["mse_to_posterior_mean"] < 0.3 * figures["posterior_mean_variance"]
    # the function samples spread out, and more where the exact posterior is uncertain
    assert figures["function_sample_std"] > 1e-2 and figures["spread_spearman"] > 0.15
