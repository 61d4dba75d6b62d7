"""PV-RNN: error regression updates only the window's adaptive vectors (weights unchanged) and the
window's prediction error decreases; the meta-prior w = 0 removes the KL term exactly."""

from pathlib import Path

import torch

from genloom.plugins.pv_rnn import PvRnnConfig, PvRnnObjectiveConfig
from genloom.plugins.pv_rnn.model import PvRnn, PvRnnObjective, gaussian_kl


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = PvRnn(PvRnnConfig(d_model=16, latent=3)).double()
        self.head = torch.nn.Linear(16, 2).double()


def _window():
    t = torch.arange(20, dtype=torch.float64)
    return torch.stack([torch.sin(t / 3), torch.cos(t / 5)], -1)[None].repeat(2, 1, 1) + 0.1 * torch.randn(2, 20, 2, dtype=torch.float64)


def test_error_regression_changes_only_the_adaptive_vectors_and_lowers_the_window_error():
    model = _Model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    objective = PvRnnObjective(PvRnnObjectiveConfig(meta_prior=0.01, regression_lr=0.1))
    tokens = _window()
    adaptive, errors = objective.error_regression(model, tokens, 40)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # network weights unchanged
    assert adaptive.abs().sum() > 0 and errors[-1] < 0.95 * errors[0] and errors[-1] == min(errors[-5:])
    # the window error at the regressed vectors is below the error at the initial (zero) vectors
    _, error_after, _ = objective.free_energy(model, adaptive, tokens, 0.01)
    _, error_before, _ = objective.free_energy(model, model.backbone.zero_adaptive(2, 20), tokens, 0.01)
    assert error_after < error_before
    # broken variant: a regression that also hands the weights to the optimiser changes them
    objective.error_regression(model, tokens, 3, extra_parameters=[model.head.weight])
    assert not torch.equal(before["head.weight"], model.head.weight)


def test_meta_prior_zero_removes_the_kl_term_exactly():
    model = _Model()
    tokens = _window()
    adaptive = torch.randn(2, 20, 6, dtype=torch.float64)
    objective = PvRnnObjective(PvRnnObjectiveConfig(meta_prior=0.0))
    loss, error, kl = objective.free_energy(model, adaptive, tokens, 0.0)
    assert kl > 0 and torch.equal(loss, error)
    # the regressed vectors with w = 0 are those of a pure prediction-error regression; with w > 0 they differ
    pure, _ = objective.error_regression(model, tokens, 10)
    weighted, _ = PvRnnObjective(PvRnnObjectiveConfig(meta_prior=1.0)).error_regression(model, tokens, 10)
    a = adaptive.clone().requires_grad_(True)
    grad = torch.autograd.grad(((model.head(model.backbone.run(a)[0]) - tokens) ** 2).mean(), a)[0]
    grad_w0 = torch.autograd.grad(objective.free_energy(model, a, tokens, 0.0)[0], a)[0]
    assert torch.equal(grad, grad_w0)
    assert (pure - weighted).abs().max() > 1e-3  # broken variant: any w > 0 changes the regression


def test_kl_is_the_gaussian_kl():
    mu_q, mu_p = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    s_q, s_p = torch.randn(3, 4, dtype=torch.float64) * 0.3, torch.randn(3, 4, dtype=torch.float64) * 0.3
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu_q, s_q.exp()), torch.distributions.Normal(mu_p, s_p.exp())).sum(-1)
    assert torch.allclose(gaussian_kl(mu_q, s_q, mu_p, s_p), expected, atol=1e-12)


def test_runnable_config_trains_a_batch_and_forecasts():
    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "pv-rnn.yaml")
    model = built.model
    x = torch.randn(2, 36, 1)
    with torch.no_grad():
        forecast = model.objective.predict(model, x)
    assert forecast.shape == (2, 12, 1) and torch.isfinite(forecast).all()
