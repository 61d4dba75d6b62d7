"""RADD's mathematics checked against exact enumeration on a tiny distribution."""

from __future__ import annotations

import itertools
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from radd_exact import ExactToy  # noqa: E402

from genloom.plugins.radd import diffusion  # noqa: E402
from genloom.plugins.radd.objective import corrupt_batch, weighted_dce  # noqa: E402
from genloom.plugins.radd.sampling import AncestralCanvas, ConfidenceCanvas  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    return ExactToy(length=3, vocab=3, seed=0)


@pytest.mark.parametrize("sigma_bar", [0.1, 0.7, 2.5])
def test_concrete_score_equals_its_definition(toy, sigma_bar):
    """Theorem 1: p_t(x^i:=y)/p_t(x) = e^-s/(1-e^-s) * p0(x^i=y | unmasked), on every noisy state."""
    checked = 0
    for n, xt in enumerate(toy.noisy):
        if not (xt == toy.mask_id).any():
            continue
        probs = toy.table[n].unsqueeze(0)
        score = diffusion.concrete_score(probs, xt.unsqueeze(0), sigma_bar, toy.mask_id)[0]
        p_xt = toy.marginal(xt, sigma_bar)
        for i in range(toy.length):
            for y in range(toy.vocab + 1):
                if xt[i] != toy.mask_id or y == toy.mask_id:
                    assert score[i, y] == 0
                    continue
                moved = xt.clone()
                moved[i] = y
                ratio = toy.marginal(moved, sigma_bar) / p_xt
                assert score[i, y].item() == pytest.approx(ratio, rel=1e-9, abs=1e-12)
                checked += 1
    assert checked == toy.vocab * toy.length * (toy.vocab + 1) ** (toy.length - 1)


def test_score_scale_is_the_analytic_factor():
    s = torch.tensor([0.05, 1.0, 4.0], dtype=torch.float64)
    assert torch.allclose(diffusion.score_scale(s), torch.exp(-s) / (1 - torch.exp(-s)))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    # log-linear schedule without eps: masking probability t and ELBO weight 1/t
    sb = diffusion.loglinear_sigma_bar(t, 0.0)
    assert torch.allclose(diffusion.mask_probability(sb), t)
    assert torch.allclose(diffusion.loglinear_sigma(t, 0.0) * diffusion.score_scale(sb), 1 / t)


@pytest.mark.parametrize("loss_form", ["t-dce", "lambda-dce", "any-order"])
def test_unmasked_outputs_are_irrelevant(loss_form):
    torch.manual_seed(0)
    vocab, mask_id = 7, 6
    x0 = torch.randint(0, 6, (8, 12))
    noisy, masked, weight = corrupt_batch(x0, loss_form=loss_form, sampling_eps=1e-3, noise_eps=1e-3,
                                          antithetic=True, mask_id=mask_id)
    assert (noisy[masked] == mask_id).all() and (noisy[~masked] == x0[~masked]).all()
    assert masked.any() and (~masked).any()
    logits = torch.randn(8, 12, vocab, requires_grad=True)
    out = weighted_dce(logits, x0, masked, weight, mask_id)
    out["loss"].backward()
    grad = logits.grad
    assert (grad[~masked] == 0).all()
    assert (grad[masked].abs().sum(-1) > 0).all()
    # arbitrary changes of the outputs at unmasked positions leave the loss bit-identical
    changed = logits.detach() + 100 * torch.randn_like(logits) * (~masked).unsqueeze(-1)
    assert weighted_dce(changed, x0, masked, weight, mask_id)["loss"] == out["loss"].detach()


def test_any_order_bound_is_exact_with_exact_conditionals(toy):
    """E_k E_M (L/k) sum_{i in M} -log p0(x^i | x^~M) = -log p0(x0): the AO-ARM identity, by enumeration."""
    L = toy.length
    for x0 in toy.states[[0, 5, 13, 26]]:
        total = 0.0
        for k in range(1, L + 1):
            subsets = list(itertools.combinations(range(L), k))
            for subset in subsets:
                masked = torch.zeros(1, L, dtype=torch.bool)
                masked[0, list(subset)] = True
                noisy = torch.where(masked, torch.full_like(x0, toy.mask_id), x0)
                logits = toy.conditional_logits(noisy).double()
                out = weighted_dce(logits, x0.unsqueeze(0), masked, torch.tensor([L / k], dtype=torch.float64), toy.mask_id,
                                   tokens=torch.tensor([1.0]))
                total += out["loss"].item() / (L * len(subsets))
        assert total == pytest.approx(-toy.log_p0(x0), rel=1e-6)


@pytest.mark.parametrize("loss_form", ["t-dce", "lambda-dce", "any-order"])
def test_monte_carlo_loss_is_unbiased_for_the_nll(toy, loss_form):
    """With exact conditionals, the sampled loss averages to -log p0(x0) (1/t weighting of the ELBO)."""
    g = torch.Generator().manual_seed(1)
    x0 = toy.states[11]
    n = 40000
    batch = x0.expand(n, -1).clone()
    noisy, masked, weight = corrupt_batch(batch, loss_form=loss_form, sampling_eps=1e-4, noise_eps=0.0,
                                          antithetic=False, mask_id=toy.mask_id, generator=g)
    logits = toy.conditional_logits(noisy).double()
    nll = diffusion.masked_cross_entropy(diffusion.clean_logits(logits, toy.mask_id), batch, masked)
    per = nll.sum(-1) * weight
    mean, se = per.mean().item(), per.std().item() / math.sqrt(n)
    assert abs(mean - (-toy.log_p0(x0))) < 4 * se + 1e-3, (mean, -toy.log_p0(x0), se)


def test_ancestral_sampler_reproduces_data_with_exact_conditionals():
    """With the exact conditionals, RADD's reverse process samples the (strongly correlated) data law."""
    toy = ExactToy(length=2, vocab=2, p0=[0.45, 0.05, 0.1, 0.4])  # states 00, 01, 10, 11
    g = torch.Generator().manual_seed(2)
    n = 3000
    canvas = torch.full((n, toy.length), toy.mask_id)
    sampler = AncestralCanvas(canvas, toy.mask_id, steps=100, generator=g)
    while not sampler.done:
        sampler.step(lambda ids, rows: toy.conditional_logits(ids))
    x = sampler.canvas
    assert (x != toy.mask_id).all()
    counts = torch.bincount(toy.index(x), minlength=len(toy.noisy)).double()[toy.index(toy.states)]
    expected = n * toy.p0
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 16.27, chi2  # 3 degrees of freedom, p = 0.001 (sampling both tokens independently gives ~3200)
    assert sampler.row_calls.max().item() <= toy.length


def test_cached_and_uncached_sampling_agree_with_fewer_calls(toy):
    outs = {}
    for cache in (True, False):
        g = torch.Generator().manual_seed(3)
        canvas = torch.full((4, toy.length), toy.mask_id)
        canvas[0, 0] = 1  # a prompt token is kept
        sampler = AncestralCanvas(canvas, toy.mask_id, steps=64, cache=cache, generator=g)
        states = [set() for _ in range(4)]
        calls = [0]

        def denoise(x, rows):
            calls[0] += 1
            for j, b in enumerate(rows.nonzero().flatten().tolist()):
                assert (x[j] == toy.mask_id).any()
                states[b].add(tuple(x[j].tolist()))
            return toy.conditional_logits(x)

        while not sampler.done:
            sampler.step(denoise)
        outs[cache] = (sampler.canvas, calls[0], sampler.row_calls.clone(), states)
    assert torch.equal(outs[True][0], outs[False][0])
    assert outs[True][0][0, 0] == 1
    assert outs[True][1] < outs[False][1] == 64
    # NFE per sequence = number of distinct noisy states (with at least one mask) it went through
    assert outs[True][2].tolist() == [len(s) for s in outs[True][3]]
    assert outs[True][2].max().item() <= toy.length


def test_confidence_sampler_picks_most_confident_position():
    torch.manual_seed(0)
    vocab, mask_id, L = 5, 5, 6
    canvas = torch.full((2, L), mask_id)
    canvas[:, 0] = 2
    logits = torch.randn(2, L, vocab + 1)
    sampler = ConfidenceCanvas(canvas, mask_id, gen_start=1, steps=5)
    chosen = sampler.step(logits)
    probs = torch.softmax(logits[..., :vocab].double(), -1)
    conf, tok = probs.max(-1)
    conf[:, 0] = -1
    best = conf.argmax(-1)
    assert chosen.sum(-1).tolist() == [1, 1]
    for b in range(2):
        assert chosen[b, best[b]]
        assert sampler.canvas[b, best[b]] == tok[b, best[b]]
    # semi-autoregressive blocks: the first block is finished before the second one starts
    sampler = ConfidenceCanvas(canvas, mask_id, gen_start=1, steps=5, block_length=None)
    assert sampler.n_blocks == 1
    canvas2 = torch.full((1, 8), mask_id)
    s2 = ConfidenceCanvas(canvas2, mask_id, gen_start=0, steps=4, block_length=4)
    for _ in range(2):
        s2.step(torch.randn(1, 8, vocab + 1))
    assert (s2.canvas[0, :4] != mask_id).all() and (s2.canvas[0, 4:] == mask_id).all()
