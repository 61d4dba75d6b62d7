"""Acceptance rules (genloom.toolkit.acceptance): exact and LANTERN's relaxed rule, by enumeration and by sampling."""

import pytest
import torch

from genloom.toolkit.acceptance import (
    ExactAcceptance, RelaxedAcceptance, categorical_residual, output_law, total_variation, verify_chain,
)
from genloom.toolkit.image_ar import latent_neighbours

V = 8


def laws(batch=64, vocab=V, seed=0, sharp=1.5):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(sharp * torch.randn(batch, vocab, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(sharp * torch.randn(batch, vocab, generator=g, dtype=torch.float64), -1)
    return p, q


def neighbours(k, vocab=V, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return latent_neighbours(torch.randn(vocab, 3, generator=g, dtype=torch.float64), k)


def every_draft(rule, p, q):
    """(B, V) acceptance probability of every possible draft."""
    vocab = p.shape[-1]
    return rule.accept_probability(p[:, None].expand(-1, vocab, -1), q[:, None].expand(-1, vocab, -1), torch.arange(vocab).expand(p.shape))


class MovedMassOnly(RelaxedAcceptance):
    """A broken budget: A(x) is limited only by the mass moved onto x, p(A(x) minus x) <= delta (per
    draft, the paper's per-draft bound), not by what the output law can drift."""

    def accept_probability(self, p, q, x):
        mass = self.neighbourhood_mass(p, x)
        allowed = (mass - mass[..., :1]) <= self.delta
        best = torch.where(allowed, mass, torch.zeros_like(mass)).amax(-1)
        return (best / q.gather(-1, x[..., None]).squeeze(-1)).clamp(max=1.0)


def test_latent_neighbours_nearest_first_self_first_and_tokens_without_latent():
    latents = torch.tensor([[0.0], [1.0], [3.0], [float("nan")], [1.2]])
    nb = latent_neighbours(latents, 3)
    assert nb[:, 0].tolist() == [0, 1, 2, 3, 4]  # each token is its own nearest
    assert nb[1].tolist() == [1, 4, 0] and nb[2].tolist() == [2, 4, 1]
    assert nb[3].tolist() == [3, -1, -1]  # no latent: its own only neighbour
    assert 3 not in nb[[0, 1, 2, 4]].flatten().tolist()  # and nobody's neighbour


def test_exact_rule_output_law_is_the_target():
    p, q = laws()
    assert torch.allclose(output_law(ExactAcceptance(), p, q), p, atol=1e-12)
    # acceptance rate 1 - TV(p, q)
    rate = (q * every_draft(ExactAcceptance(), p, q)).sum(-1)
    assert torch.allclose(rate, 1 - total_variation(p, q), atol=1e-12)


@pytest.mark.parametrize("k, delta", [(1, 0.5), (1, 1.0), (4, 0.0), (V, 0.0)])
def test_relaxation_off_is_the_exact_rule(k, delta):
    """Neighbourhood size 1 or delta 0: every draft's acceptance probability is the exact one."""
    p, q = laws(seed=1)
    rule = RelaxedAcceptance(neighbours(k), delta)
    assert torch.allclose(every_draft(rule, p, q), every_draft(ExactAcceptance(), p, q), atol=1e-12)
    assert torch.allclose(output_law(rule, p, q), p, atol=1e-12)


@pytest.mark.parametrize("k", [2, 4, V])
@pytest.mark.parametrize("delta", [0.05, 0.2, 0.5])
def test_relaxed_output_law_is_within_delta_of_the_target(k, delta):
    """TV(output, target) by enumeration is at most delta, equals the extra accepted mass, and the
    relaxation accepts at least as much as the exact rule (more somewhere)."""
    p, q = laws(batch=256, seed=2)
    rule = RelaxedAcceptance(neighbours(k), delta)
    law = output_law(rule, p, q)
    assert torch.allclose(law.sum(-1), torch.ones(256, dtype=torch.float64)) and bool((law >= 0).all())
    tv = total_variation(law, p)
    assert float(tv.max()) <= delta + 1e-12
    relaxed, exact = every_draft(rule, p, q), every_draft(ExactAcceptance(), p, q)
    assert bool((relaxed >= exact - 1e-12).all()) and bool((relaxed - exact <= delta + 1e-12).all())
    assert torch.allclose(tv, (q * (relaxed - exact)).sum(-1), atol=1e-12)
    assert float((q * (relaxed - exact)).sum(-1).max()) > 0


def test_broken_budget_breaks_the_bound():
    """Broken variant: limiting each draft's moved mass (not its acceptance gain) lets the output
    drift by more than delta -- the enumeration check above catches it."""
    p, q = laws(batch=256, seed=2)
    delta = 0.2
    tv = total_variation(output_law(MovedMassOnly(neighbours(V), delta), p, q), p)
    assert float(tv.max()) > delta


def test_acceptance_grows_with_neighbourhood_and_budget():
    p, q = laws(batch=256, seed=3)
    rates = [float((q * every_draft(RelaxedAcceptance(neighbours(k), d), p, q)).sum(-1).mean()) for k, d in [(1, 0.0), (2, 0.2), (V, 0.2), (V, 0.5), (V, 1.0)]]
    assert rates == sorted(rates) and rates[-1] > rates[0]
    assert rates[-1] == pytest.approx(1.0)  # every token in A(x), no budget: everything passes


def _first_token_counts(rule, p, q, draws, seed):
    """Verify one draft per row of ``draws`` copies of (p, q) with ``verify_chain``; counts of the output token."""
    g = torch.Generator().manual_seed(seed)
    P, Q = p.expand(draws, -1), q.expand(draws, -1)
    drafts = torch.multinomial(Q, 1, replacement=True, generator=g)
    target = torch.stack([P, P], 1)  # the bonus law is unused by the first token's count
    n, nxt, _ = verify_chain(rule, target, Q[:, None], drafts, g)
    out = torch.where(n > 0, drafts[:, 0], nxt)
    return torch.bincount(out, minlength=p.shape[-1]).double()


def _chisquare_pvalue(observed, expected_law):
    stats = pytest.importorskip("scipy.stats")
    expected = expected_law * observed.sum()
    keep = expected > 0
    return stats.chisquare(observed[keep].numpy(), expected[keep].numpy()).pvalue


@pytest.mark.parametrize("draws", [2_000, 20_000])
def test_sampled_relaxation_off_follows_the_target(draws):
    """Chi-square: tokens from ``verify_chain`` with k = 1 (and with delta = 0) follow p; the draft's law q
    fails the same test at 20k draws."""
    p, q = laws(batch=1, seed=4)
    for rule in (RelaxedAcceptance(neighbours(1), 0.5), RelaxedAcceptance(neighbours(V), 0.0)):
        counts = _first_token_counts(rule, p, q, draws, seed=draws)
        assert _chisquare_pvalue(counts, p[0]) > 1e-3
    if draws >= 20_000:
        assert _chisquare_pvalue(counts, q[0]) < 1e-6


def test_sampled_relaxed_tokens_follow_the_enumerated_law():
    """Chi-square: ``verify_chain`` with the relaxed rule samples exactly ``output_law``; the broken
    variant that resamples rejections from p instead of the residual does not."""
    p, q = laws(batch=1, seed=5)
    rule = RelaxedAcceptance(neighbours(V), 0.3)
    law = output_law(rule, p, q)[0]
    assert float(total_variation(law, p[0])) > 0.02  # the relaxation moved the law
    counts = _first_token_counts(rule, p, q, 20_000, seed=7)
    assert _chisquare_pvalue(counts, law) > 1e-3
    assert _chisquare_pvalue(counts, p[0]) < 1e-6
    # broken: a residual of p itself
    broken = torch.tensor(0)
    import genloom.toolkit.acceptance as acc

    original = acc.categorical_residual
    acc.categorical_residual = lambda p_, q_: p_
    try:
        broken = _first_token_counts(rule, p, q, 20_000, seed=7)
    finally:
        acc.categorical_residual = original
    assert _chisquare_pvalue(broken, law) < 1e-6


def test_categorical_residual():
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    q = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)
    assert torch.allclose(categorical_residual(p, q), torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(categorical_residual(p, p), p)


def test_rule_input_errors():
    with pytest.raises(ValueError, match="delta"):
        RelaxedAcceptance(neighbours(2), -0.1)
    with pytest.raises(ValueError, match="neighbours"):
        RelaxedAcceptance(torch.zeros(4, dtype=torch.long), 0.1)
