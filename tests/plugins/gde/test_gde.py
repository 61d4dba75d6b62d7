"""GDE: the set encoder is invariant to permuting the samples, and once trained nearly invariant to
resampling the same distribution; on 1-D Gaussians latent distances rank-correlate with W2 and the
conditional generator reproduces the encoded mean and variance."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.gde.model import embedding_figures
from genloom.testing import check_model_config, tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "gde.yaml"
SMALL = ["backbone.d_model=16", "head.hidden=16"]


@pytest.fixture(scope="module")
def random_model():
    model = tiny_model(CONFIG, SMALL, seed=0).model.double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@torch.no_grad()
def test_the_embedding_is_invariant_to_permuting_the_samples(random_model):
    model = random_model
    s = torch.randn(5, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    z = model.objective.embed(model, s)
    assert (z - model.objective.embed(model, s[:, perm])).abs().max() < 1e-6
    assert (z[0] - z[1]).abs().max() > 1e-3  # different sets, different embeddings


@torch.no_grad()
def test_order_weighted_pooling_breaks_the_invariance(random_model):
    """The broken variant: the encoder pools with weights that depend on the sample's index."""
    model = random_model
    encoder = model.backbone.encoder
    s = torch.randn(5, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    try:
        encoder.forward = lambda h, valid=None: encoder.rho((encoder.phi(h) * torch.linspace(0, 2, h.shape[1], dtype=h.dtype)[None, :, None]).mean(1))
        z = model.objective.embed(model, s)
        assert (z - model.objective.embed(model, s[:, perm])).abs().max() > 1e-4
    finally:
        encoder.__dict__.pop("forward", None)


def test_runnable_config_assembles_and_trains_a_batch():
    built = check_model_config(CONFIG, SMALL)
    z = built.model.objective.embed(built.model, torch.randn(3, 10))
    assert z.shape == (3, 4) and built.model.head.sample(z.detach(), 7).shape == (3, 7)


@pytest.fixture(scope="module")
def trained():
    built = tiny_model(CONFIG, data=True, seed=0)
    model, data = built.model, built.data
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = torch.utils.data.DataLoader(data.load("train"), batch_size=64)
    for step, batch in enumerate(loader):
        if step == 1200:
            break
        loss = model.loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), data


@pytest.mark.slow
def test_latent_geometry_follows_w2_and_the_generator_reproduces_the_moments(trained):
    model, data = trained
    figures = embedding_figures(model, data, count=128, samples=512)
    print(figures)
    assert figures["w2_spearman"] > 0.9
    assert figures["resampling_gap"] < 0.2  # two draws of one distribution embed close together
    assert figures["mean_error"] < 0.15 and figures["std_error"] < 0.15
