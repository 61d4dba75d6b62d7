"""Distribution transformer: the output mixture has weights summing to 1 and positive-definite covariances,
is invariant to permuting the data points and equivariant to permuting the prior's components, and after
training matches the analytic posterior of conjugate Gaussian-mean tasks (small KL)."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.distribution_transformer.model import posterior_kl
from genloom.testing import check_model_config, tiny_model
from genloom.toolkit.amortized import GaussianMeanPrior, gmm_log_prob

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "distribution-transformer.yaml"
SMALL = ["backbone.d_model=16", "backbone.n_heads=2", "head.hidden=16"]


def _random_model(overrides=()):
    """Float64, with weights large enough that attention is far from uniform."""
    model = tiny_model(CONFIG, SMALL + list(overrides), seed=0).model.double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.fixture(scope="module")
def case():
    model = _random_model(["data.dim=2", "data.components=3"])
    prior = GaussianMeanPrior(dim=2, components=3)
    gen = torch.Generator().manual_seed(1)
    w, m, c = prior.sample_prior(4, generator=gen)
    _, y = prior.sample(w, m, c, 7, generator=gen)
    return model, (w, m, c), y


def _post(model, prior, y):
    return model.objective.posterior(model, *prior, y)


def test_weights_sum_to_one_and_covariances_are_positive_definite(case):
    model, prior, y = case
    w, _, covs = _post(model, prior, y)
    assert torch.allclose(w.sum(-1), torch.ones(4, dtype=torch.float64), atol=1e-12) and (w > 0).all()
    assert torch.allclose(covs, covs.transpose(-1, -2)) and (torch.linalg.eigvalsh(covs) > 0).all()


@torch.no_grad()
def test_invariant_to_data_order_and_equivariant_to_component_order(case):
    model, (w, m, c), y = case
    base = _post(model, (w, m, c), y)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(2))
    shuffled = _post(model, (w, m, c), y[:, perm])
    assert max(float((a - b).abs().max()) for a, b in zip(base, shuffled)) < 1e-6
    k = torch.tensor([2, 0, 1])
    swapped = _post(model, (w[:, k], m[:, k], c[:, k]), y)
    assert max(float((a[:, k] - b).abs().max()) for a, b in zip(base, swapped)) < 1e-6
    x = torch.randn(5, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert (gmm_log_prob(*base, x) - gmm_log_prob(*swapped, x)).abs().max() < 1e-6  # the same mixture
    assert float((base[1] - m).abs().max()) > 1e-3  # the data moved the means


def _index_feature(n, width):
    """i * a fixed non-constant vector (a constant shift would vanish in the LayerNorms)."""
    return torch.arange(n, dtype=torch.float64)[None, :, None] * torch.linspace(-1, 1, width, dtype=torch.float64)


@torch.no_grad()
def test_position_features_break_both_symmetries(case):
    """Broken variants: an index feature on the data tokens, or on the component tokens."""
    model, (w, m, c), y = case
    head = model.head
    embed_data, embed_components = head.embed_data, head.embed_components
    perm, k = torch.randperm(7, generator=torch.Generator().manual_seed(2)), torch.tensor([2, 0, 1])
    try:
        head.embed_data = lambda t: embed_data(t) + _index_feature(t.shape[1], 16)
        a, b = _post(model, (w, m, c), y), _post(model, (w, m, c), y[:, perm])
        assert float((a[1] - b[1]).abs().max()) > 1e-4
        head.embed_data = embed_data
        head.embed_components = lambda *p: embed_components(*p) + _index_feature(p[0].shape[1], 16)
        a, b = _post(model, (w, m, c), y), _post(model, (w[:, k], m[:, k], c[:, k]), y)
        assert float((a[1][:, k] - b[1]).abs().max()) > 1e-4
    finally:
        head.__dict__.pop("embed_data", None)
        head.__dict__.pop("embed_components", None)


def test_runnable_config_assembles_and_trains_a_batch():
    check_model_config(CONFIG, SMALL)


@pytest.mark.slow
def test_trained_posterior_matches_the_analytic_posterior():
    built = tiny_model(CONFIG, data=True, seed=0)
    model, data = built.model, built.data
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    prior = data.prior
    for _ in range(1500):
        w, m, c = prior.sample_prior(64, generator=gen, dtype=torch.float32)
        theta, y = prior.sample(w, m, c, 16, generator=gen)
        loss = model.loss({"weights": w, "means": m, "covs": c, "theta": theta.float(), "y": y.float()})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    figures = posterior_kl(model.eval(), data, 256, samples=1024)
    print(figures)
    for n in (1, 4, 16):  # far below the KL of the prior itself (a model that ignores the data)
        assert figures[f"kl_n{n}"] < 0.25 * figures[f"kl_prior_n{n}"]  # measured: 0.032/0.51, 0.060/0.93, 0.167/1.54
