"""Continuous speculative decoding: the output follows the target law (KS test against the target
CDF on 20k draws) and the acceptance rate is 1 - TV(p, q); resampling from p instead of the
residual (the broken variant) is rejected by the same test. The discrete rule, written in the same
toolkit terms, passes a chi-square test."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from genloom.plugins.continuous_spec_decoding import ContinuousSpecConfig
from genloom.plugins.continuous_spec_decoding.decoder import ContinuousSpeculativeDecoder, MixtureAR
from genloom.toolkit import acceptance
from genloom.toolkit.acceptance import Categorical, GaussianMixture1D, speculative_accept

N = 20_000


def _mixtures(n):
    d = torch.float64
    p = GaussianMixture1D(torch.tensor([[0.0, -0.5, 0.3]], dtype=d).expand(n, 3),
                          torch.tensor([[-2.0, 0.5, 2.5]], dtype=d).expand(n, 3),
                          torch.tensor([[0.6, 0.8, 0.5]], dtype=d).expand(n, 3))
    q = GaussianMixture1D(torch.tensor([[0.2, 0.0]], dtype=d).expand(n, 2),
                          torch.tensor([[-1.0, 1.5]], dtype=d).expand(n, 2),
                          torch.tensor([[1.2, 1.0]], dtype=d).expand(n, 2))
    return p, q


def _cdf_fn(p):
    one = GaussianMixture1D(p.logits[:1], p.loc[:1], p.scale[:1])

    def cdf(x):
        x = torch.as_tensor(np.atleast_1d(x), dtype=torch.float64)
        return GaussianMixture1D(one.logits.expand(len(x), -1), one.loc.expand(len(x), -1), one.scale.expand(len(x), -1)).cdf(x).numpy()

    return cdf


def _tv(p, q):
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    m = len(grid)
    pp = GaussianMixture1D(p.logits[:1].expand(m, -1), p.loc[:1].expand(m, -1), p.scale[:1].expand(m, -1)).log_prob(grid).exp()
    qq = GaussianMixture1D(q.logits[:1].expand(m, -1), q.loc[:1].expand(m, -1), q.scale[:1].expand(m, -1)).log_prob(grid).exp()
    return float(0.5 * torch.trapezoid((pp - qq).abs(), grid))


def test_continuous_rule_follows_the_target_law_and_accepts_at_one_minus_tv():
    g = torch.Generator().manual_seed(0)
    p, q = _mixtures(N)
    draft = q.sample(g)
    accepted, value = speculative_accept(p, q, draft, g)
    assert stats.kstest(value.numpy(), _cdf_fn(p)).pvalue > 1e-3
    rate, tv = accepted.double().mean().item(), _tv(p, q)
    assert abs(rate - (1 - tv)) < 4 * math.sqrt(rate * (1 - rate) / N)
    # the drafts alone (no verification) are far from the target law: the test has power
    assert stats.kstest(draft.numpy(), _cdf_fn(p)).pvalue < 1e-6


def test_broken_variant_resampling_from_p_instead_of_the_residual_is_rejected(monkeypatch):
    g = torch.Generator().manual_seed(0)
    p, q = _mixtures(N)
    draft = q.sample(g)
    monkeypatch.setattr(acceptance, "residual_sample", lambda p, q, generator=None, max_tries=0: p.sample(generator))
    _, value = acceptance.speculative_accept(p, q, draft, g)
    assert stats.kstest(value.numpy(), _cdf_fn(p)).pvalue < 1e-6


def test_discrete_rule_in_the_same_terms_passes_chi_square():
    g = torch.Generator().manual_seed(1)
    p_vec = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15], dtype=torch.float64)
    q_vec = torch.tensor([0.3, 0.1, 0.3, 0.1, 0.2], dtype=torch.float64)
    p, q = Categorical(p_vec.expand(N, -1)), Categorical(q_vec.expand(N, -1))
    draft = q.sample(g)
    accepted, value = speculative_accept(p, q, draft, g)
    counts = torch.bincount(value, minlength=5).numpy()
    assert stats.chisquare(counts, p_vec.numpy() * N).pvalue > 1e-3
    rate = accepted.double().mean().item()
    assert abs(rate - torch.minimum(p_vec, q_vec).sum().item()) < 4 * math.sqrt(rate * (1 - rate) / N)
    # without the residual (the draft kept as is) the law is q's: rejected
    assert stats.chisquare(torch.bincount(draft, minlength=5).numpy(), p_vec.numpy() * N).pvalue < 1e-6


def test_generic_rejection_residual_matches_the_exact_categorical_residual():
    g = torch.Generator().manual_seed(2)
    p_vec = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15], dtype=torch.float64)
    q_vec = torch.tensor([0.3, 0.1, 0.3, 0.1, 0.2], dtype=torch.float64)

    class NoExactResidual(Categorical):
        residual = property(lambda self: (_ for _ in ()).throw(AttributeError))

    p = NoExactResidual(p_vec.expand(N, -1))
    assert not hasattr(p, "residual")
    drawn = acceptance.residual_sample(p, Categorical(q_vec.expand(N, -1)), g)
    expected = (p_vec - q_vec).clamp_min(0)
    expected = expected / expected.sum()
    counts = torch.bincount(drawn, minlength=5).numpy()
    keep = expected.numpy() > 0
    assert counts[~keep].sum() == 0
    assert stats.chisquare(counts[keep], expected.numpy()[keep] * N).pvalue > 1e-3


@torch.no_grad()
def test_decoder_output_follows_the_target_autoregressive_law():
    torch.manual_seed(0)
    target = MixtureAR(window=3, hidden=16, components=3).double()
    draft = MixtureAR(window=2, hidden=8, components=2).double()
    draft.net[-1].bias[2:4] += 0.7  # shift the draft's component means: a visibly different law
    decoder = ContinuousSpeculativeDecoder(ContinuousSpecConfig(gamma=3))
    g = torch.Generator().manual_seed(3)
    rows = 1200
    context = torch.zeros(rows, 2, dtype=torch.float64)
    out = decoder.decode(target, draft, context, n_new=3, generator=g)
    assert out.values.shape == (rows, 3)
    assert out.target_passes < rows * 3  # fewer target passes than values
    # reference: plain ancestral sampling of the target
    seq = context
    for _ in range(3):
        d = target(seq)
        last = GaussianMixture1D(d.logits[:, -1], d.loc[:, -1], d.scale[:, -1])
        seq = torch.cat([seq, last.sample(g)[:, None]], 1)
    reference = seq[:, 2:]
    for j in range(3):
        assert stats.ks_2samp(out.values[:, j].numpy(), reference[:, j].numpy()).pvalue > 1e-3
    # the draft's own ancestral law differs (so the two-sample test can tell them apart)
    seq = context
    for _ in range(3):
        d = draft(seq)
        seq = torch.cat([seq, GaussianMixture1D(d.logits[:, -1], d.loc[:, -1], d.scale[:, -1]).sample(g)[:, None]], 1)
    assert min(stats.ks_2samp(seq[:, 2 + j].numpy(), reference[:, j].numpy()).pvalue for j in range(3)) < 1e-4


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="gamma"):
        ContinuousSpecConfig(gamma=0)
    with pytest.raises(ValueError, match="max_residual_tries"):
        ContinuousSpecConfig(max_residual_tries=0)
