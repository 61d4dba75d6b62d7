"""The amortised-inference toolkit: exact posteriors agree with independent references, set encoders are
permutation-invariant, the context/query mask is what it says, and the bar distribution integrates to 1."""

import math

import numpy as np
import pytest
import torch

from genloom.toolkit.amortized import (
    AttentionPool,
    BarDistribution,
    ContextQueryPattern,
    DeepSetEncoder,
    GaussianMeanPrior,
    GPPrior,
    gaussian_sets,
    gmm_kl,
    gmm_log_prob,
    gmm_mean_posterior,
    spearman,
    w2_gaussian,
)


def test_gp_posterior_matches_scikit_learn():
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel

    prior = GPPrior(lengthscale=0.3, outputscale=1.5, noise=0.2)
    x, y, _ = prior.sample(1, 25, generator=torch.Generator().manual_seed(0))
    xq = torch.linspace(-1, 1, 11, dtype=torch.float64)[None, :, None]
    mean, var = prior.posterior(x[:, :15], y[:, :15], xq)
    gp = GaussianProcessRegressor(ConstantKernel(1.5, "fixed") * RBF(0.3, "fixed"), alpha=0.2**2, optimizer=None)
    gp.fit(x[0, :15].numpy(), y[0, :15].numpy())
    ref_mean, ref_std = gp.predict(xq[0].numpy(), return_std=True)
    np.testing.assert_allclose(mean[0].numpy(), ref_mean, atol=1e-8)
    np.testing.assert_allclose(var[0].numpy(), ref_std**2 + 0.2**2, atol=1e-8)  # labels: f's variance + noise
    empty_mean, empty_var = prior.posterior(x[:, :0], y[:, :0], xq)
    assert torch.all(empty_mean == 0) and torch.allclose(empty_var, torch.full_like(empty_var, 1.5 + 0.04))


def test_gp_prior_samples_have_the_kernel_covariance():
    prior = GPPrior(lengthscale=0.5, noise=0.1)
    gen = torch.Generator().manual_seed(1)
    x = torch.tensor([[[-0.5], [0.0], [0.3]]], dtype=torch.float64).expand(20000, 3, 1)
    # sample() draws its own inputs; check the function law at fixed inputs through the same Cholesky route
    from genloom.toolkit.amortized import rbf_kernel

    cov = rbf_kernel(x[:1], x[:1], 0.5)[0]
    f = (torch.linalg.cholesky(cov + 1e-8 * torch.eye(3, dtype=torch.float64)) @ torch.randn(3, 20000, generator=gen, dtype=torch.float64)).T
    assert (torch.cov(f.T) - cov).abs().max() < 0.05
    xs, ys, fs = prior.sample(4000, 2, generator=gen)
    assert abs(float(ys.var()) - (1 + 0.01)) < 0.08 and xs.min() >= -1 and xs.max() <= 1


def _grid_posterior(weights, means, variances, y, noise_var, grid):
    log_prior = torch.logsumexp(torch.log(weights) + torch.distributions.Normal(means, variances.sqrt()).log_prob(grid[:, None]), -1)
    log_lik = torch.distributions.Normal(grid[:, None], math.sqrt(noise_var)).log_prob(y[None]).sum(-1)
    log_post = log_prior + log_lik
    dx = grid[1] - grid[0]
    return torch.exp(log_post - torch.logsumexp(log_post, 0)) / dx


def test_gmm_mean_posterior_is_the_exact_posterior_density():
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    m = torch.tensor([-1.5, 2.0], dtype=torch.float64)
    v = torch.tensor([0.5, 1.2], dtype=torch.float64)
    y = torch.tensor([0.4, 1.1, -0.2], dtype=torch.float64)
    post = gmm_mean_posterior(w[None], m[None, :, None], v[None, :, None, None], y[None, :, None], noise_var=2.0)
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    density = gmm_log_prob(*post, grid[:, None, None])[:, 0].exp()
    assert (density - _grid_posterior(w, m, v, y, 2.0, grid)).abs().max() < 1e-6
    assert abs(float(post[0].sum()) - 1) < 1e-12
    # no data: the posterior is the prior
    valid = torch.zeros(1, 3, dtype=torch.bool)
    w0, m0, c0 = gmm_mean_posterior(w[None], m[None, :, None], v[None, :, None, None], y[None, :, None], 2.0, valid=valid)
    assert torch.allclose(w0[0], w) and torch.allclose(m0[0, :, 0], m) and torch.allclose(c0[0, :, 0, 0], v)


def test_gaussian_mean_prior_tasks_and_kl():
    prior = GaussianMeanPrior(dim=2, components=3)
    gen = torch.Generator().manual_seed(0)
    w, m, c = prior.sample_prior(5, generator=gen)
    theta, y = prior.sample(w, m, c, 7, generator=gen)
    assert theta.shape == (5, 2) and y.shape == (5, 7, 2) and torch.allclose(w.sum(-1), torch.ones(5, dtype=torch.float64))
    post = gmm_mean_posterior(w, m, c, y, prior.noise_var)
    assert gmm_kl(post, post, generator=gen).abs().max() < 1e-12
    shifted = (post[0], post[1] + 0.5, post[2])
    assert (gmm_kl(post, shifted, generator=gen) > 0.01).all()


def test_w2_of_gaussians_matches_the_quantile_coupling():
    samples, mean, std = gaussian_sets(2, 50000, generator=torch.Generator().manual_seed(0))
    empirical = torch.sqrt(((samples[0].sort().values - samples[1].sort().values) ** 2).mean())
    assert abs(float(empirical - w2_gaussian(mean[0], std[0], mean[1], std[1]))) < 0.03
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0) and spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.parametrize("encoder", ["deepset", "attention"])
def test_set_encoders_are_permutation_invariant(encoder):
    torch.manual_seed(0)
    net = (DeepSetEncoder(3, 16, 8) if encoder == "deepset" else AttentionPool(3 * 4, 4, n_seeds=2)).double()
    width = 3 if encoder == "deepset" else 12
    s = torch.randn(4, 9, width, dtype=torch.float64)
    perm = torch.randperm(9)
    assert (net(s) - net(s[:, perm])).abs().max() < 1e-12
    # padding is ignored
    valid = torch.ones(4, 11, dtype=torch.bool)
    valid[:, 9:] = False
    padded = torch.cat([s, 100 * torch.randn(4, 2, width, dtype=torch.float64)], 1)
    assert (net(padded, valid) - net(s)).abs().max() < 1e-12
    # the broken variant: a position feature makes the same set encode differently
    positions = torch.linspace(0, 1, 9, dtype=torch.float64)[None, :, None].expand(4, 9, 1)
    broken = lambda t: net(torch.cat([t[..., :-1], t[..., -1:] + positions], -1))  # noqa: E731
    assert (broken(s) - broken(s[:, perm])).abs().max() > 1e-4


def test_context_query_pattern():
    pattern = ContextQueryPattern(n_context=2)
    mask = pattern.dense(5)
    expected = torch.tensor([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [1, 1, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected) and not pattern.is_causal
    both = ContextQueryPattern(n_context=2, queries_see_queries=True).dense(5)
    assert both[2:, 2:].all() and not both[:2, 2:].any()
    assert torch.equal(ContextQueryPattern(n_context=0).dense(3), torch.eye(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_context"):
        ContextQueryPattern(n_context=-1)


def _integral(bars, logits, n=40001):
    b = bars.borders.double()
    grid = torch.linspace(float(b[0]) - 1, float(b[-1]) + 1, n, dtype=torch.float64)
    dens = bars.density(logits.double()[None].expand(n, -1), grid)
    return float(torch.trapezoid(dens, grid))


def test_bar_distribution_integrates_to_one_and_its_moments_are_right():
    bars = BarDistribution(BarDistribution.gaussian_borders(20, scale=1.3, tail=4.0)).double()
    logits = torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert _integral(bars, logits) == pytest.approx(1.0, abs=2e-3)
    assert float(bars.cdf(logits, torch.tensor(10.0, dtype=torch.float64))) == pytest.approx(1.0)
    draws = bars.sample(logits.expand(100000, -1), generator=torch.Generator().manual_seed(1))
    assert float(draws.mean()) == pytest.approx(float(bars.mean(logits)), abs=0.01)
    assert float(draws.var()) == pytest.approx(float(bars.variance(logits)), rel=0.02)
    y = torch.tensor([-0.3, 0.9], dtype=torch.float64)
    assert torch.allclose(bars.log_prob(logits.expand(2, -1), y).exp(), bars.density(logits.expand(2, -1), y))
    # outside the support: scored in the outer bars
    assert bars.bucket(torch.tensor([-100.0, 100.0], dtype=torch.float64)).tolist() == [0, 19]
    # equal prior mass per bar under N(0, scale^2)
    normal = torch.distributions.Normal(0.0, 1.3)
    inner = normal.cdf(bars.borders[1:-1].double())
    assert torch.allclose(inner[1:] - inner[:-1], torch.full((18,), 1 / 20, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        BarDistribution(torch.tensor([0.0, 0.0, 1.0]))


def test_a_density_without_the_width_division_does_not_integrate_to_one():
    """The broken variant: a bar's probability used as its density (no division by its width)."""

    class Broken(BarDistribution):
        def log_prob(self, logits, y):
            logp = torch.log_softmax(logits, -1)
            return logp.gather(-1, self.bucket(y)[..., None])[..., 0]

    bars = Broken(BarDistribution.gaussian_borders(20, scale=1.3)).double()
    logits = torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert abs(_integral(bars, logits) - 1.0) > 0.1


def test_bar_borders_from_samples_are_quantiles():
    samples = torch.randn(10000, generator=torch.Generator().manual_seed(0))
    b = BarDistribution.borders_from_samples(samples, 10)
    assert len(b) == 11 and bool((b[1:] > b[:-1]).all())
    counts = torch.histc(samples.double(), bins=1, min=float(b[3]), max=float(b[4]))
    assert abs(float(counts) / 10000 - 0.1) < 0.01
