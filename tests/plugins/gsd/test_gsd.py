"""Grouped speculative decoding (decoder ``gsd``): group size 1 is speculative Jacobi decoding (exact),
acceptance is non-decreasing along nested group sizes, more than one token per target pass."""

import pytest
import torch

from genloom.core.generation import run
from genloom.testing import exact_continuations, tiny_model
from genloom.toolkit.acceptance import ExactAcceptance, GroupAcceptance, output_law, probability_rank_groups
from genloom.toolkit.jacobi import JacobiConfig, SpeculativeJacobiDecoder

VOCAB = 6
PROMPT = [1, 4, 2]
CONFIG = {
    "tokenizer": {"name": "ids", "vocab_size": VOCAB},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "next-token"},
}


@pytest.fixture(scope="module")
def target():
    built = tiny_model(base=CONFIG, seed=0)
    built.model.eval()
    return built


def laws(batch, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(1.5 * torch.randn(batch, vocab, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(1.5 * torch.randn(batch, vocab, generator=g, dtype=torch.float64), -1)
    return p, q


def expected_acceptance(rule, p, q):
    vocab = p.shape[-1]
    every = torch.arange(vocab).expand(p.shape)
    return (q * rule.accept_probability(p[:, None].expand(-1, vocab, -1), q[:, None].expand(-1, vocab, -1), every)).sum(-1)


class WindowAroundDraft(GroupAcceptance):
    """Broken variant: G(x) = the ``group_size`` tokens nearest to x in the target's probability rank
    (a window centred on x, not a partition)."""

    def accept_probability(self, p, q, x):
        order = torch.sort(p, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(p.shape[-1]).expand(p.shape).contiguous())
        rank_x = rank.gather(-1, x[..., None])
        low = (rank_x - (self.group_size - 1) // 2).clamp(min=0, max=p.shape[-1] - self.group_size)
        same = (rank >= low) & (rank < low + self.group_size)
        ratio = (p * same).sum(-1) / (q * same).sum(-1)
        return ratio.clamp(max=1.0)


def chisquare_pvalue(observed, law):
    stats = pytest.importorskip("scipy.stats")
    expected = law * observed.sum()
    keep = expected > 0
    return stats.chisquare(observed[keep].numpy(), expected[keep].numpy()).pvalue


def continuations_pvalue(built, dec, draws, seed=4):
    out = run(built.model, [PROMPT] * draws, dec, max_new_tokens=2, seed=seed)
    exact = exact_continuations(built.model, PROMPT, 2, (), VOCAB)
    counts = {s: 0 for s in exact}
    for ids in out.ids:
        counts[tuple(ids)] += 1
    observed = torch.tensor([counts[s] for s in exact], dtype=torch.float64)
    return chisquare_pvalue(observed, torch.tensor([exact[s] for s in exact], dtype=torch.float64))


def test_groups_partition_the_vocabulary_by_target_rank():
    p = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]])
    assert probability_rank_groups(p, 2).tolist() == [[2, 0, 1, 0, 1]]  # ranks 1,3 | 4,2 | 0
    assert probability_rank_groups(p, 1).tolist() == [[4, 0, 3, 1, 2]]


def test_group_size_one_is_the_exact_rule():
    p, q = laws(128, 8, seed=0)
    every = torch.arange(8).expand(p.shape)
    a = GroupAcceptance(1).accept_probability(p[:, None].expand(-1, 8, -1), q[:, None].expand(-1, 8, -1), every)
    b = ExactAcceptance().accept_probability(p[:, None].expand(-1, 8, -1), q[:, None].expand(-1, 8, -1), every)
    assert torch.equal(a, b)
    assert torch.allclose(output_law(GroupAcceptance(1), p, q), p, atol=1e-12)


def test_acceptance_is_non_decreasing_along_nested_group_sizes():
    """By enumeration at 500 random (p, q) over 16 tokens: the expected acceptance equals
    sum_G min(p(G), q(G)) and never falls from group size 1 to 2, 4, 8, 16 (16: everything passes).
    Broken variant: groups that are a window around the draft (not a partition) can lower it."""
    p, q = laws(500, 16, seed=1)
    rates = [expected_acceptance(GroupAcceptance(g), p, q) for g in (1, 2, 4, 8, 16)]
    for smaller, larger in zip(rates, rates[1:]):
        assert bool((larger >= smaller - 1e-12).all())
    assert float((rates[2] - rates[0]).mean()) > 0.05 and torch.allclose(rates[-1], torch.ones(500, dtype=torch.float64))
    groups = probability_rank_groups(p, 4)
    grouped = sum(torch.minimum((p * (groups == k)).sum(-1), (q * (groups == k)).sum(-1)) for k in range(4))
    assert torch.allclose(rates[2], grouped, atol=1e-12)
    broken = [expected_acceptance(WindowAroundDraft(g), p, q) for g in (1, 2, 4, 8, 16)]
    assert any(bool((b < a - 1e-6).any()) for a, b in zip(broken, broken[1:]))


def test_group_size_one_is_speculative_jacobi_token_for_token(target):
    """Same seed: ``gsd`` with group size 1 commits exactly the tokens of plain speculative Jacobi
    decoding (the toolkit's decoder with the exact rule), at batch 3 with left padding."""
    prompts = [[1, 2, 3, 4, 5], [2], [5, 0, 1]]
    gsd = target.ctx.build("decoder", {"name": "gsd", "window": 4, "group_size": 1})
    sjd = SpeculativeJacobiDecoder(JacobiConfig(window=4), target.ctx)
    a = run(target.model, prompts, gsd, max_new_tokens=15, seed=9)
    b = run(target.model, prompts, sjd, max_new_tokens=15, seed=9)
    assert a.ids == b.ids and a.metrics.acceptance_lengths == b.metrics.acceptance_lengths
    assert gsd.exact == "sampling" and sjd.exact == "sampling"
    assert target.ctx.build("decoder", {"name": "gsd", "group_size": 2}).exact is None


def test_group_size_one_follows_the_target_law_fast(target):
    """Small variant: 3k two-token continuations of exact SJD (group size 1) match the enumerated target law."""
    assert continuations_pvalue(target, target.ctx.build("decoder", {"name": "gsd", "window": 3, "group_size": 1}), 3_000) > 1e-3


class StaleLaws(SpeculativeJacobiDecoder):
    """Broken variant: the Jacobi refill redraws window tokens from p_j but records them as uniform draws."""

    def advance(self, session, commit):
        super().advance(session, commit)
        tokens, laws = session.scratch["window"]
        session.scratch["window"] = (tokens, torch.full_like(laws, 1.0 / laws.shape[-1]))


@pytest.mark.slow
def test_group_size_one_follows_the_target_law_20k(target):
    """20k two-token continuations (window 3): chi-square against the enumerated target law; the
    broken bookkeeping (redrawn tokens recorded with the wrong law) fails the same test."""
    assert continuations_pvalue(target, target.ctx.build("decoder", {"name": "gsd", "window": 3, "group_size": 1}), 20_000) > 1e-3
    assert continuations_pvalue(target, StaleLaws(JacobiConfig(window=3), target.ctx), 20_000) < 1e-6


def test_larger_groups_accept_more_on_the_core_loop(target):
    prompts = [PROMPT] * 64
    lengths = [run(target.model, prompts, target.ctx.build("decoder", {"name": "gsd", "window": 4, "group_size": g}), max_new_tokens=16, seed=0).metrics.mean_acceptance_length
               for g in (1, 2, 6)]
    assert lengths[0] < lengths[1] < lengths[2] == 4  # group size = vocabulary: every draft passes


def test_config_errors_and_processors(target):
    from genloom.core.errors import ConfigError, GenerationError

    with pytest.raises(ConfigError, match="group_size"):
        target.ctx.build("decoder", {"name": "gsd", "group_size": 0})
    with pytest.raises(ConfigError, match="window"):
        target.ctx.build("decoder", {"name": "gsd", "window": 0})
    procs = [target.ctx.build("processor", {"name": "temperature", "temperature": 0.5})]
    with pytest.raises(GenerationError, match="processors"):
        run(target.model, [PROMPT], target.ctx.build("decoder", "gsd"), max_new_tokens=3, processors=procs)


@pytest.mark.slow
def test_on_embedded_digits_more_than_one_token_per_pass():
    """The image AR target over VQ tokens of the digits: exact SJD and GSD commit more than one token
    per target pass, and group size 4 accepts more than group size 1."""
    import image_ar_helpers

    target, _ = image_ar_helpers.trained_pair()
    tok = target.model.tokenizer
    prompts = [[tok.class_token(c)] for c in range(tok.num_classes)] * 4
    lengths = {}
    for g in (1, 4):
        out = run(target.model, prompts, target.ctx.build("decoder", {"name": "gsd", "window": 6, "group_size": g}), max_new_tokens=tok.tokens_per_image, seed=0)
        lengths[g] = out.metrics.mean_acceptance_length
    assert lengths[4] > lengths[1] > 0  # accepted drafts per round; +1 committed token per target pass
