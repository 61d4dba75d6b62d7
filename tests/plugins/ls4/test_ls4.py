"""LS4: the latent SSM prior computed through its convolution kernel equals the step-by-step
recurrence used for sampling; the KL is analytic per step; generation draws from the prior."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.ls4 import LS4Config, LS4ObjectiveConfig
from genloom.plugins.ls4.model import LS4, LS4Objective, gaussian_kl


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    model = LS4(LS4Config(d_model=8, latent=3, n_layers=2, modes=4, dt_min=1e-2, dt_max=0.3)).double()
    return model


def test_prior_by_convolution_equals_the_recurrence_that_samples_it(backbone):
    noise = torch.randn(2, 30, 3, dtype=torch.float64)
    z, mu_rec, logvar_rec = backbone.sample_prior(2, 30, noise=noise)
    mu_conv, logvar_conv = backbone.prior_of(z)
    assert (mu_conv - mu_rec).abs().max() < 1e-5 and (logvar_conv - logvar_rec).abs().max() < 1e-5
    # generation draws from that prior: every latent is its prior mean plus its std times the noise
    assert torch.allclose(z, mu_conv + (0.5 * logvar_conv).exp() * noise, atol=1e-5)
    # broken variant: a prior that is not shifted (z_t would condition on itself) no longer matches
    mu_bad, _ = backbone.prior_of(z, shift=False)
    assert (mu_bad - mu_rec).abs().max() > 1e-3


def test_every_stack_is_the_same_under_convolution_and_recurrence(backbone):
    x = torch.randn(2, 17, 8, dtype=torch.float64)
    stack = backbone.posterior
    states = stack.init_states(2, None, torch.float64)
    steps = []
    for t in range(17):
        out, states = stack.step(x[:, t:t + 1], states)
        steps.append(out)
    assert (stack(x) - torch.cat(steps, 1)).abs().max() < 1e-5


def test_kl_is_analytic_per_step_and_matches_monte_carlo():
    torch.manual_seed(1)
    mu_q, mu_p = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    lv_q, lv_p = torch.randn(2, 5, 3, dtype=torch.float64) * 0.5, torch.randn(2, 5, 3, dtype=torch.float64) * 0.5
    kl = gaussian_kl(mu_q, lv_q, mu_p, lv_p)
    assert kl.shape == (2, 5)
    q = torch.distributions.Normal(mu_q, (0.5 * lv_q).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * lv_p).exp())
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, p).sum(-1), atol=1e-12)
    samples = q.sample((20000,))
    monte_carlo = (q.log_prob(samples) - p.log_prob(samples)).sum(-1).mean(0)
    assert (monte_carlo - kl).abs().max() < 0.1
    # broken variant: the KL with the variances' ratio inverted is not the KL
    wrong = gaussian_kl(mu_q, lv_p, mu_p, lv_q)
    assert (wrong - kl).abs().max() > 0.1


def test_objective_and_generation():
    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "ls4.yaml")
    model = built.model
    out = model.objective.generate(model, 3, 10, torch.Generator().manual_seed(0))
    assert out.shape == (3, 10, 1) and torch.isfinite(out).all()
    objective = LS4Objective(LS4ObjectiveConfig(beta=0.0))
    terms = objective.loss(model, {"x": torch.randn(4, 24, 1)})
    assert torch.isfinite(terms["loss"]) and torch.allclose(terms["loss"], terms["reconstruction"])
