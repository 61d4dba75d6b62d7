"""SpecTr's K-SEQ draft selection (Sun et al. 2023): exactness and acceptance against the optimum."""

import math

import pytest
import torch

from genloom.plugins.spectr.sampling import (
    kseq_acceptance,
    kseq_beta,
    kseq_optimal_rho,
    kseq_residual,
    kseq_select,
    spectr_block,
)

stats = pytest.importorskip("scipy.stats")
pytest.importorskip("scipy.optimize")
from genloom.plugins.spectr.optimal_transport import optimal_acceptance  # noqa: E402

DRAWS = 100_000
ALPHA = 1e-3


def dirichlet_pair(vocab, seed, concentration=1.0):
    torch.manual_seed(seed)
    dist = torch.distributions.Dirichlet(torch.full((vocab,), concentration))
    p, q = dist.sample().double(), dist.sample().double()
    return p / p.sum(), q / q.sum()


def chi_square_pvalue(samples, probs):
    counts = torch.bincount(samples.flatten(), minlength=probs.numel()).double()
    expected = probs.flatten() * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a zero-probability outcome was produced"
    expected = expected[keep] * (counts.sum() / expected[keep].sum())
    return stats.chisquare(counts[keep].numpy(), expected.numpy()).pvalue


def single_draft_acceptance(p, q):
    """Speculative sampling's acceptance, 1 - TV(p, q), computed independently."""
    return 1 - 0.5 * (p - q).abs().sum()


@pytest.mark.parametrize("seed,num_drafts", [(0, 2), (1, 3), (2, 4), (3, 8)])
def test_kseq_output_is_distributed_as_target(seed, num_drafts):
    p, q = dirichlet_pair(6, seed)
    gen = torch.Generator().manual_seed(seed)
    candidates = torch.multinomial(q.float(), DRAWS * num_drafts, replacement=True, generator=gen).reshape(DRAWS, num_drafts)
    choice = kseq_select(p.expand(DRAWS, -1), q.expand(DRAWS, -1), candidates, generator=gen)
    assert chi_square_pvalue(choice.token, p) > ALPHA
    # the empirical acceptance rate is the analytic 1 - (1 - beta(rho*))^k (4 standard errors)
    expected = kseq_acceptance(p, q, num_drafts).item()
    rate = choice.accepted.double().mean().item()
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / DRAWS)
    # an accepted token is the candidate at the reported index
    rows = choice.accepted
    assert torch.equal(candidates[rows].gather(1, choice.index[rows, None]).squeeze(1), choice.token[rows])
    assert torch.all(choice.index[~rows] == -1)


def test_an_invalid_rho_would_bias_the_output():
    """Negative control: forcing rho = 1 with k = 4 (invalid) leaves a residual with negative mass;
    clamping it gives a biased sampler that the chi-square test catches, which kseq_select avoids
    by raising rho to rho*."""
    p, q = dirichlet_pair(6, 0)
    k = 4
    assert kseq_optimal_rho(p, q, k).item() > 1.0
    gen = torch.Generator().manual_seed(0)
    candidates = torch.multinomial(q.float(), DRAWS * k, replacement=True, generator=gen).reshape(DRAWS, k)
    ratio = (p[candidates] / q[candidates]).clamp(max=1)
    passes = torch.rand(DRAWS, k, generator=gen, dtype=torch.float64) < ratio
    first = torch.where(passes, torch.arange(k), k).min(-1).values
    accepted = first < k
    residual = kseq_residual(p, q, k, 1.0)
    tokens = torch.where(accepted, candidates.gather(1, first.clamp(max=k - 1)[:, None]).squeeze(1),
                         torch.multinomial(residual.float(), DRAWS, replacement=True, generator=gen))
    assert chi_square_pvalue(tokens, p) < 1e-12
    # kseq_select with rho=1 requested stays exact
    choice = kseq_select(p.expand(DRAWS, -1), q.expand(DRAWS, -1), candidates, rho=1.0, generator=gen)
    assert chi_square_pvalue(choice.token, p) > ALPHA


@pytest.mark.parametrize("seed", range(6))
def test_optimal_rho_is_the_smallest_valid_and_residual_is_a_distribution(seed):
    p, q = dirichlet_pair(7, seed, concentration=0.5)
    for k in (1, 2, 3, 5):
        rho = kseq_optimal_rho(p, q, k).item()
        assert 1.0 <= rho <= k
        beta = kseq_beta(p, q, rho).item()
        excess = 1 - (1 - beta) ** k - rho * beta
        assert excess <= 1e-10  # valid
        if rho > 1.0:
            assert excess > -1e-9  # and tight: the root of 1 - (1 - beta)^k = rho beta
        # p_res before normalisation is nonnegative and holds the remaining (1 - beta)^k mass
        capped = torch.minimum(q, p / rho)
        raw = p - capped * (1 - (1 - beta) ** k) / beta
        assert raw.min().item() > -1e-9
        assert math.isclose(raw.sum().item(), (1 - beta) ** k, abs_tol=1e-9)
        torch.testing.assert_close(kseq_residual(p, q, k, rho), raw.clamp_min(0) / raw.clamp_min(0).sum())
    # k = 1 is speculative sampling: rho* = 1, residual norm(max(0, p - q))
    assert kseq_optimal_rho(p, q, 1).item() == 1.0
    torch.testing.assert_close(kseq_residual(p, q, 1, 1.0), (p - q).clamp_min(0) / (p - q).clamp_min(0).sum())


@pytest.mark.parametrize("seed,vocab,num_drafts", [(0, 3, 2), (1, 4, 2), (2, 4, 3), (3, 3, 4), (4, 5, 2), (5, 4, 3)])
def test_kseq_acceptance_against_single_draft_and_optimal_transport(seed, vocab, num_drafts):
    p, q = dirichlet_pair(vocab, seed, concentration=0.7)
    kseq = kseq_acceptance(p, q, num_drafts).item()
    single = single_draft_acceptance(p, q).item()
    optimum = optimal_acceptance(p.numpy(), q.numpy(), num_drafts)
    assert kseq >= single - 1e-12
    assert kseq <= optimum + 1e-7  # K-SEQ is a valid transport plan, the LP is the best one
    assert kseq >= (1 - (1 - 1 / num_drafts) ** num_drafts) * optimum - 1e-9 >= (1 - 1 / math.e) * optimum - 1e-9
    # the LP with one draft is the maximal coupling, i.e. speculative sampling
    assert math.isclose(optimal_acceptance(p.numpy(), q.numpy(), 1), single, abs_tol=1e-7)


def test_kseq_strictly_improves_on_single_draft_when_distributions_differ():
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    single = single_draft_acceptance(p, q).item()  # 0.6
    assert math.isclose(kseq_acceptance(p, q, 1).item(), single, abs_tol=1e-12)
    previous = single
    for k in (2, 3, 4, 8):
        current = kseq_acceptance(p, q, k).item()
        assert current > previous + 1e-3
        previous = current


def bigram_tables(vocab, seed):
    torch.manual_seed(seed)
    dist = torch.distributions.Dirichlet(torch.ones(vocab))
    return dist.sample((vocab,)).double(), dist.sample((vocab,)).double()


def spectr_generate(target, draft, start, num_tokens, gamma, num_drafts, gen, rho=None):
    """Batched SpecTr loop over bigram tables; returns tokens, rounds and accepted drafts per round."""
    batch = start.shape[0]
    rows = torch.arange(batch)
    out = torch.zeros(batch, num_tokens + gamma + 1, dtype=torch.long)
    length = torch.zeros(batch, dtype=torch.long)
    last = start.clone()
    passes, accepted_total, rounds_total = 0, 0, 0
    while bool((length < num_tokens).any()):
        prev = last[:, None].expand(batch, num_drafts)
        drafts, probs = [], []
        for _ in range(gamma):
            q = draft[prev]  # (B, k, V)
            x = torch.multinomial(q.reshape(-1, q.shape[-1]).float(), 1, generator=gen).reshape(batch, num_drafts)
            drafts.append(x)
            probs.append(q)
            prev = x
        drafts = torch.stack(drafts, 2)
        context = torch.cat([last[:, None, None].expand(batch, num_drafts, 1), drafts], 2)
        result = spectr_block(target[context], torch.stack(probs, 2), drafts, rho=rho, generator=gen)
        passes += 1
        running = length < num_tokens
        accepted_total += int(result.num_accepted[running].sum())
        rounds_total += int(running.sum())
        count = result.num_accepted + 1
        take = (torch.arange(gamma + 1)[None] < count[:, None]) & running[:, None]
        positions = length[:, None] + torch.arange(gamma + 1)[None]
        out[rows[:, None].expand_as(take)[take], positions[take]] = result.tokens[take]
        # the committed prefix is a surviving draft's prefix
        winner = drafts[rows, result.winner]
        prefix = torch.arange(gamma)[None] < result.num_accepted[:, None]
        assert torch.equal(winner[prefix], result.tokens[:, :gamma][prefix])
        last = result.tokens.gather(1, result.num_accepted[:, None]).squeeze(1)
        length = length + torch.where(running, count, 0)
    return out[:, :num_tokens], passes, accepted_total / rounds_total


def test_spectr_block_generates_the_target_joint_distribution():
    vocab, gamma, k = 4, 3, 3
    target, draft = bigram_tables(vocab, seed=7)
    gen = torch.Generator().manual_seed(7)
    start = torch.zeros(DRAWS // 2, dtype=torch.long)
    tokens, _, _ = spectr_generate(target, draft, start, num_tokens=3, gamma=gamma, num_drafts=k, gen=gen)
    exact = (target[0][:, None, None] * target[:, :, None] * target[None, :, :]).reshape(-1)
    code = tokens[:, 0] * vocab * vocab + tokens[:, 1] * vocab + tokens[:, 2]
    assert chi_square_pvalue(code, exact) > ALPHA


def test_more_drafts_accept_more_tokens_per_round():
    vocab, gamma = 6, 4
    target, draft = bigram_tables(vocab, seed=11)
    start = torch.zeros(3_000, dtype=torch.long)
    lengths = {}
    for k in (1, 2, 4):
        gen = torch.Generator().manual_seed(11)
        _, _, lengths[k] = spectr_generate(target, draft, start, num_tokens=5, gamma=gamma, num_drafts=k, gen=gen)
    assert lengths[1] + 0.1 < lengths[2] < lengths[4] - 0.1
