"""Exactness of speculative sampling (Leviathan et al. 2023; Chen et al. 2023): the math alone."""

import pytest
import torch

from genloom.plugins.speculative.sampling import (
    acceptance_probability,
    greedy_block,
    residual_distribution,
    speculative_accept,
    speculative_block,
)

stats = pytest.importorskip("scipy.stats")

DRAWS = 200_000
ALPHA = 1e-3  # fixed seeds: the p-values below are deterministic; a wrong sampler gives ~1e-100


def random_pair(vocab, seed, concentration=1.0):
    gen = torch.Generator().manual_seed(seed)
    alpha = torch.full((vocab,), concentration)
    dirichlet = torch.distributions.Dirichlet(alpha)
    torch.manual_seed(seed)
    return dirichlet.sample().double(), dirichlet.sample().double(), gen


def chi_square_pvalue(samples, probs):
    counts = torch.bincount(samples.flatten(), minlength=probs.numel()).double()
    expected = probs.flatten() * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a zero-probability outcome was produced"
    expected = expected[keep] * (counts.sum() / expected[keep].sum())  # float rounding of sum(p)
    return stats.chisquare(counts[keep].numpy(), expected.numpy()).pvalue


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_position_output_is_distributed_as_target(seed):
    p, q, gen = random_pair(6, seed)
    drafts = torch.multinomial(q.float(), DRAWS, replacement=True, generator=gen)
    accepted, tokens = speculative_accept(p.expand(DRAWS, -1), q.expand(DRAWS, -1), drafts, gen)
    assert chi_square_pvalue(tokens, p) > ALPHA
    # acceptance rate is sum min(p, q) = 1 - TV(p, q)  (4 standard errors)
    rate = accepted.double().mean()
    expected = acceptance_probability(p, q)
    assert abs(rate - expected) < 4 * (expected * (1 - expected) / DRAWS) ** 0.5
    assert torch.isclose(expected, 1 - 0.5 * (p - q).abs().sum())


def test_the_test_detects_a_biased_sampler():
    """Negative control: taking the draft unchecked (output ~ q) fails the same chi-square test."""
    p, q, gen = random_pair(6, 0)
    drafts = torch.multinomial(q.float(), DRAWS, replacement=True, generator=gen)
    assert chi_square_pvalue(drafts, p) < 1e-12


def test_residual_is_normalised_positive_part():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    q = torch.tensor([0.2, 0.4, 0.1, 0.3], dtype=torch.float64)
    torch.testing.assert_close(residual_distribution(p, q), torch.tensor([0.75, 0.0, 0.25, 0.0], dtype=torch.float64))
    # identical distributions never reject: the fallback is p itself
    torch.testing.assert_close(residual_distribution(p, p), p)


def bigram_tables(vocab, seed, concentration=1.0):
    torch.manual_seed(seed)
    dirichlet = torch.distributions.Dirichlet(torch.full((vocab,), concentration))
    return dirichlet.sample((vocab,)).double(), dirichlet.sample((vocab,)).double()


def speculative_generate(target, draft, start, num_tokens, gamma, gen, greedy=False):
    """A batched speculative decoding loop over bigram tables (row = previous token).

    Every sequence accepts its own number of drafts per round; returns the first ``num_tokens``
    tokens per sequence and the number of rounds (target forward passes).
    """
    batch = start.shape[0]
    rows = torch.arange(batch)
    out = torch.zeros(batch, num_tokens + gamma + 1, dtype=torch.long)
    length = torch.zeros(batch, dtype=torch.long)
    last = start.clone()
    passes = 0
    while bool((length < num_tokens).any()):
        drafts, draft_probs, prev = [], [], last
        for _ in range(gamma):
            q = draft[prev]
            x = q.argmax(-1) if greedy else torch.multinomial(q.float(), 1, generator=gen).squeeze(-1)
            drafts.append(x)
            draft_probs.append(q)
            prev = x
        drafts = torch.stack(drafts, 1)
        target_probs = target[torch.cat([last[:, None], drafts], 1)]  # one "forward pass" over the block
        passes += 1
        if greedy:
            result = greedy_block(target_probs, drafts)
        else:
            result = speculative_block(target_probs, torch.stack(draft_probs, 1), drafts, gen)
        tokens = result.tokens(drafts)
        count = result.num_accepted + 1
        running = length < num_tokens
        take = (torch.arange(gamma + 1)[None] < count[:, None]) & running[:, None]
        positions = length[:, None] + torch.arange(gamma + 1)[None]
        out[rows[:, None].expand_as(take)[take], positions[take]] = tokens[take]
        last = tokens.gather(1, result.num_accepted[:, None]).squeeze(1)
        length = length + torch.where(running, count, 0)
    return out[:, :num_tokens], passes


def test_block_verification_generates_the_target_joint_distribution():
    vocab, gamma = 4, 3
    target, draft = bigram_tables(vocab, seed=3)
    gen = torch.Generator().manual_seed(3)
    start = torch.zeros(DRAWS, dtype=torch.long)
    tokens, _ = speculative_generate(target, draft, start, num_tokens=3, gamma=gamma, gen=gen)
    # exact P(x1, x2, x3 | x0 = 0) of the target chain
    exact = target[0][:, None, None] * target[:, :, None] * target[None, :, :]
    exact = exact.reshape(-1)
    code = tokens[:, 0] * vocab * vocab + tokens[:, 1] * vocab + tokens[:, 2]
    assert chi_square_pvalue(code, exact) > ALPHA
    # the draft alone is far from the target: the same test rejects draft-only sampling
    draft_only, _ = speculative_generate(draft, draft, start, num_tokens=3, gamma=gamma, gen=gen)
    draft_code = draft_only[:, 0] * vocab * vocab + draft_only[:, 1] * vocab + draft_only[:, 2]
    assert chi_square_pvalue(draft_code, exact) < 1e-12


def test_block_accepts_per_sequence_counts_and_matches_expected_acceptance():
    """Batched: rows accept different numbers of drafts; the per-position rate is sum min(p, q)."""
    vocab, gamma, batch = 5, 4, 50_000
    torch.manual_seed(0)
    p = torch.distributions.Dirichlet(torch.ones(vocab)).sample().double()
    q = torch.distributions.Dirichlet(torch.ones(vocab)).sample().double()
    gen = torch.Generator().manual_seed(0)
    drafts = torch.multinomial(q.float(), batch * gamma, replacement=True, generator=gen).reshape(batch, gamma)
    result = speculative_block(p.expand(batch, gamma + 1, vocab), q.expand(batch, gamma, vocab), drafts, gen)
    beta = acceptance_probability(p, q).item()
    counts = torch.bincount(result.num_accepted, minlength=gamma + 1).double() / batch
    # truncated geometric: P(n) = beta^n (1 - beta) for n < gamma, beta^gamma for n = gamma
    expected = torch.tensor([beta**n * (1 - beta) for n in range(gamma)] + [beta**gamma], dtype=torch.float64)
    torch.testing.assert_close(counts, expected, atol=0.01, rtol=0)
    assert len(torch.unique(result.num_accepted)) == gamma + 1
    assert torch.equal(result.accepted.sum(-1), result.num_accepted)
    # the committed prefix is the drafts' prefix
    tokens = result.tokens(drafts)
    for n in range(gamma + 1):
        rows = result.num_accepted == n
        assert torch.equal(tokens[rows, :n], drafts[rows, :n])


def test_greedy_mode_equals_target_greedy_with_fewer_passes():
    vocab, gamma, num_tokens = 8, 4, 40
    torch.manual_seed(5)
    logits = torch.randn(vocab, vocab) * 3
    target = logits.softmax(-1).double()
    # a draft that agrees with the target's argmax most of the time, but not always
    draft = (logits + torch.randn(vocab, vocab)).softmax(-1).double()
    start = torch.arange(vocab)
    reference = torch.zeros(vocab, num_tokens, dtype=torch.long)
    prev = start
    for i in range(num_tokens):
        prev = target[prev].argmax(-1)
        reference[:, i] = prev
    passes = []
    for row in range(vocab):  # one sequence at a time, to count its target passes
        tokens, used = speculative_generate(target, draft, start[row : row + 1], num_tokens, gamma, gen=None, greedy=True)
        assert torch.equal(tokens[0], reference[row])
        passes.append(used)
    assert max(passes) <= num_tokens and sum(passes) < vocab * num_tokens
    # the batched loop commits the same tokens
    batched, _ = speculative_generate(target, draft, start, num_tokens, gamma, gen=None, greedy=True)
    assert torch.equal(batched, reference)
    assert not torch.equal(draft.argmax(-1), target.argmax(-1))  # the draft is not the target
