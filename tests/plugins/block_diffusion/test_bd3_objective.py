"""The BD3-LM objective: vectorised pass == per-block KV-cache loop; block size 1 == AR cross-entropy."""

from __future__ import annotations

import itertools
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bd3_helpers import build, random_ids  # noqa: E402

from genloom.core.pattern import causal  # noqa: E402
from genloom.plugins.block_diffusion import BlockDiffusionObjectiveConfig  # noqa: E402
from genloom.plugins.block_diffusion.objective import looped_noisy_logits  # noqa: E402


def ar_cross_entropy(model, ids, mask_id):
    """-log p(x_b | x_{<b}) per token (B, L), each from its own causal pass over [x_{<b}, MASK] (no cache).

    With block size 1, the noisy copy of token b is a mask token at position b that sees only the
    clean tokens before it: an autoregressive model whose query token is the mask. This is its
    next-token cross-entropy, computed prefix by prefix, independently of the objective's code.
    """
    B, L = ids.shape
    out = []
    for b in range(L):
        inputs = torch.cat([ids[:, :b], torch.full((B, 1), mask_id)], dim=1)
        logits = model(inputs, pattern=causal())[:, -1].float()
        logits[:, mask_id] = float("-inf")
        out.append(F.cross_entropy(logits, ids[:, b], reduction="none"))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("block_size,L", [(4, 16), (3, 10), (1, 6), (8, 8)])
def test_vectorised_pass_equals_blockwise_kv_cache_loop(block_size, L):
    built = build(block_size)
    model, objective = built.model, built.model.objective
    x0 = random_ids(3, L, seed=block_size)
    x_t, masked, _ = objective.corrupt(x0, generator=torch.Generator().manual_seed(1))
    assert masked.any() and (~masked).any()
    with torch.no_grad():
        vectorised = objective.noisy_logits(model, x_t, x0)
        looped = looped_noisy_logits(model, x_t, x0, block_size)
    torch.testing.assert_close(vectorised, looped, atol=1e-5, rtol=1e-5)
    # the clean context matters: corrupting an earlier clean block changes a later block's logits
    if L > block_size:
        x0_other = x0.clone()
        x0_other[:, 0] = (x0_other[:, 0] + 1) % 256
        with torch.no_grad():
            other = objective.noisy_logits(model, x_t, x0_other)
        assert (other[:, block_size:] - vectorised[:, block_size:]).abs().max() > 1e-4
        torch.testing.assert_close(other[:, :block_size], vectorised[:, :block_size], atol=1e-6, rtol=0)


def test_block_size_one_fully_masked_equals_ar_cross_entropy():
    """L' = 1 with t = 1 (the paper's tuned schedule for L' = 1): weight -alpha'/(1-alpha) = 1, all masked."""
    built = build(1, objective=dict(mask_rate_min=1.0, mask_rate_max=1.0))
    model, objective = built.model, built.model.objective
    x0 = random_ids(4, 12, seed=3)
    with torch.no_grad():
        out = objective.loss(model, {"ids": x0})
        ar = ar_cross_entropy(model, x0, objective.mask_id)
    assert float(out["mask_rate"]) == 1.0
    assert float(out["loss"]) == pytest.approx(float(ar.mean()), abs=1e-5)


@pytest.mark.parametrize("t", [0.2, 0.7])
def test_block_size_one_exact_expectation_over_masks_equals_ar_cross_entropy(t):
    """For L' = 1 and the linear schedule, E_q[(1/t) 1{masked} CE] = t * (1/t) * CE at *every* t.

    The expectation is taken exactly, by enumerating all 2^L masks with their probabilities.
    """
    built = build(1)
    model, objective = built.model, built.model.objective
    L = 5
    x0 = random_ids(1, L, seed=4)
    masks = torch.tensor(list(itertools.product([False, True], repeat=L)))  # (2^L, L)
    probs = torch.where(masks, torch.tensor(t, dtype=torch.float64), torch.tensor(1 - t, dtype=torch.float64)).prod(1)
    ids = x0.expand(len(masks), L)
    t_token = torch.full((len(masks), L), t)
    with torch.no_grad():
        term, _ = objective.weighted_loss(objective.noisy_logits(model, torch.where(masks, objective.mask_id, ids), ids), ids, masks, t_token)
        ar = ar_cross_entropy(model, x0, objective.mask_id).mean().double()
    expectation = (probs * term.double().mean(1)).sum()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(expectation) == pytest.approx(float(ar), abs=1e-5)


@pytest.mark.slow
def test_block_size_one_monte_carlo_loss_is_unbiased_for_ar_nll_with_higher_variance():
    """t ~ U[0, 1]: the sampled NELBO averages to the AR NLL; with t = 1 its variance is exactly 0 (the paper's L' = 1 variance argument)."""
    torch.manual_seed(0)
    built = build(1)
    model, objective = built.model, built.model.objective
    x0 = random_ids(1, 8, seed=5)
    draws = []
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ar = float(ar_cross_entropy(model, x0, objective.mask_id).mean())
        ids = x0.expand(1000, -1)
        for _ in range(4):
            _, masked, t_token = objective.corrupt(ids, generator=g)
            term, _ = objective.weighted_loss(objective.noisy_logits(model, torch.where(masked, objective.mask_id, ids), ids), ids, masked, t_token)
            draws.append(term.mean(1))
    draws = torch.cat(draws)
    mean, se = float(draws.mean()), float(draws.std() / math.sqrt(len(draws)))
    assert abs(mean - ar) < 4 * se, (mean, ar, se)
    assert float(draws.std()) > 0.1  # the unclipped schedule is noisy; t = 1 has none (previous test)


def test_loss_weights_are_the_linear_schedule_elbo_weights():
    """Per token: (1/t_b) * CE on masked tokens, exactly 0 on unmasked (SUBS carry-over)."""
    built = build(4)
    model, objective = built.model, built.model.objective
    x0 = random_ids(2, 8, seed=6)
    masked = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 1], [0, 1, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    t_token = torch.tensor([[0.5] * 4 + [0.25] * 4, [0.8] * 4 + [1.0] * 4])
    with torch.no_grad():
        logits = objective.noisy_logits(model, torch.where(masked, objective.mask_id, x0), x0)
        term, ce = objective.weighted_loss(logits, x0, masked, t_token)
        out = objective.loss_given_noise(model, x0, masked, t_token)
    torch.testing.assert_close(term, torch.where(masked, ce / t_token, torch.zeros_like(ce)))
    assert float(out["loss"]) == pytest.approx(float(term.sum() / x0.numel()), rel=1e-6)
    # the mask token never gets probability (SUBS)
    lp = torch.log_softmax(logits.float(), -1)
    assert torch.isfinite(lp).all()


def test_per_block_rates_and_stratified_times():
    cfg = BlockDiffusionObjectiveConfig(block_size=4, mask_rate_min=0.3, mask_rate_max=0.8)
    from genloom.plugins.block_diffusion.objective import BlockDiffusionObjective

    objective = BlockDiffusionObjective(cfg, mask_id=256)
    g = torch.Generator().manual_seed(0)
    ids = random_ids(64, 32, seed=7)
    x_t, masked, t_token = objective.corrupt(ids, generator=g)
    # one time per block, shared by the block's tokens
    blocks = t_token.view(64, 8, 4)
    assert torch.equal(blocks, blocks[..., :1].expand_as(blocks))
    assert float(t_token.min()) >= 0.3 and float(t_token.max()) <= 0.8
    # stratified: the 64*8 block times fill [0.3, 0.8] evenly (one per stratum)
    times = torch.sort(blocks[..., 0].flatten()).values
    strata = ((times - 0.3) / 0.5 * times.numel()).floor().clamp_max(times.numel() - 1)
    assert torch.equal(strata, torch.arange(times.numel(), dtype=strata.dtype))
    assert torch.equal(x_t == 256, masked)
    # empirical masking rate follows the block's time
    assert abs(float(masked.float().mean()) - float(t_token.mean())) < 0.03


def test_loss_trains_everything_and_handles_next_token_windows():
    built = build(4, seq_len=8)
    model = built.model
    model.train()
    ids = random_ids(2, 9, seed=8)  # next-token windows carry seq_len + 1 ids; the targets ids[:, 1:] are scored
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False  # a padded tail
    out = model.objective.loss(model, {"ids": ids, "mask": mask}, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert float(out["_tokens"]) == 13  # the padded targets are not counted
    # the scored tokens are the targets ids[:, 1:]; ids[:, 0] only exists for next-token objectives
    shifted = ids.clone()
    shifted[:, 0] = (shifted[:, 0] + 7) % 256
    again = model.objective.loss(model, {"ids": shifted, "mask": mask}, generator=torch.Generator().manual_seed(0))
    assert float(again["loss"].detach()) == float(out["loss"].detach())
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) == len(grads)


@pytest.mark.parametrize(
    "bad",
    [dict(block_size=0), dict(mask_rate_min=0.6, mask_rate_max=0.5), dict(mask_rate_max=1.5), dict(min_time=0.0)],
)
def test_config_validation_names_the_field(bad):
    with pytest.raises(ValueError) as err:
        BlockDiffusionObjectiveConfig(**bad)
    assert next(iter(bad)) in str(err.value)
