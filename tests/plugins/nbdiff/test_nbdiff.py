"""NBDiff: block size 1 is the causal mask and the next-token loss; the auxiliary loss is the
next-token loss at any block size; the block size follows the growth schedule; the context cache
is exact."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import run
from genloom.core.pattern import CAUSAL
from genloom.testing import check_decoder, check_objective, tiny_model
from genloom.toolkit.blocks import ContextCausalPattern, NoisyCleanPattern, convert_from_ar, sequence_batch

BACKBONE = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}
AR = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": BACKBONE, "objective": {"name": "next-token"}}


def nb(**objective):
    return {**AR, "objective": {"name": "nbdiff", **objective}, "decoder": {"name": "nbdiff"}}


@pytest.fixture(scope="module")
def ar():
    torch.manual_seed(0)
    return tiny_model(base=AR)


@pytest.fixture(scope="module")
def converted(ar):
    built = tiny_model(base=nb(block_sizes=[1, 2, 4], growth_steps=[2, 4]))
    convert_from_ar(built.model, ar.model)
    return built


def batch(n=3, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length - 1, dtype=torch.bool)
    mask[0, 6:] = False
    return {"ids": torch.randint(0, 256, (n, length), generator=g), "mask": mask}


def test_block_size_one_mask_is_the_causal_mask():
    L = 6
    p = ContextCausalPattern(block_size=1, seq_len=L)
    q, k = torch.arange(2 * L)[:, None], torch.arange(2 * L)[None, :]
    dense = p.allowed(q, k)
    causal = CAUSAL.dense(L)
    assert torch.equal(dense[L:, L:], causal)                   # the clean half: causal
    assert torch.equal(dense[:L, L:], causal & ~torch.eye(L, dtype=torch.bool))  # noisy j sees clean < j
    assert torch.equal(dense[:L, :L], torch.eye(L, dtype=torch.bool))            # and itself
    assert not bool(dense[L:, :L].any())
    # the broken variant: BD3's block-causal clean half is not causal for blocks > 1
    bd = NoisyCleanPattern(block_size=2, seq_len=L).allowed(q, k)
    assert not torch.equal(bd[L:, L:], causal)


@torch.no_grad()
def test_block_size_one_loss_and_the_auxiliary_loss_are_next_token(ar, converted):
    b = batch()
    ids, scored = sequence_batch(b)
    target = ar.model.loss(b)["loss"]
    obj = converted.model.objective
    out = obj.loss_given_noise(converted.model, ids, scored, scored, torch.ones(ids.shape), 1)
    torch.testing.assert_close(out["diffusion_loss"], target, rtol=0, atol=1e-5)
    for block_size in (1, 2, 4):
        masked = scored & (torch.rand(ids.shape, generator=torch.Generator().manual_seed(block_size)) < 0.5)
        out = obj.loss_given_noise(converted.model, ids, scored, masked, torch.full(ids.shape, 0.5), block_size)
        torch.testing.assert_close(out["ar_loss"], target, rtol=0, atol=1e-5)  # the clean half is causal


@torch.no_grad()
def test_broken_variant_block_causal_context_breaks_the_auxiliary_loss(ar, converted, monkeypatch):
    import genloom.toolkit.blocks as blocks
    monkeypatch.setattr(blocks, "ContextCausalPattern", NoisyCleanPattern)
    b = batch()
    ids, scored = sequence_batch(b)
    out = converted.model.objective.loss_given_noise(converted.model, ids, scored, scored, torch.ones(ids.shape), 4)
    assert abs(float(out["ar_loss"]) - float(ar.model.loss(b)["loss"])) > 1e-3


def test_block_size_follows_the_growth_schedule(ar):
    built = tiny_model(base=nb(block_sizes=[1, 2, 4], growth_steps=[2, 4]))
    model = built.model.train()
    seen = [int(check_objective(built, batch())["block_size"]) for _ in range(6)]
    assert seen == [1, 1, 2, 2, 4, 4]
    model.eval()
    assert int(model.loss(batch())["block_size"]) == 4 and int(model.objective.step) == 6  # evaluation does not advance it
    assert "objective.step" in model.state_dict()


PROMPTS = [[1, 2, 3, 4, 5, 6], [9, 8], [7, 7, 7, 7]]


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_context_cache_equals_recomputation(converted, threshold):
    def go(cache):
        return run(converted.model, PROMPTS, converted.ctx.build("decoder", {"name": "nbdiff", "threshold": threshold, "cache": cache}), max_new_tokens=12)
    cached, plain = go(True), go(False)
    assert cached.ids == plain.ids
    assert cached.metrics.extra["positions_computed"] < plain.metrics.extra["positions_computed"]


def test_block_size_one_decoding_is_greedy_ar_decoding(ar, converted):
    greedy = run(ar.model, PROMPTS, ar.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=6)
    res = run(converted.model, PROMPTS, converted.ctx.build("decoder", {"name": "nbdiff", "block_size": 1}), max_new_tokens=6)
    assert res.ids == greedy.ids


def test_contract_and_config_errors(converted):
    check_decoder(converted, "nbdiff")
    from genloom.plugins.nbdiff import NBDiffObjectiveConfig
    with pytest.raises(ValueError, match="growth_steps"):
        NBDiffObjectiveConfig(block_sizes=(1, 4), growth_steps=())
