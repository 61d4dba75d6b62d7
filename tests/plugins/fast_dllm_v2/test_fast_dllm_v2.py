"""Fast-dLLM v2: complementary views cover every token exactly once; the block-level cache is exact;
the sub-block cache is exact at its refreshes and exactly the uncached decoder at full width."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import run
from genloom.testing import check_decoder, check_objective, tiny_model
from genloom.toolkit.blocks import convert_from_ar
from genloom.toolkit.canvas_cache import BlockCache

BACKBONE = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}
AR = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": BACKBONE, "objective": {"name": "next-token"}}
CONFIG = {**AR, "objective": {"name": "fast-dllm-v2", "block_size": 4}, "decoder": {"name": "fast-dllm-v2"}}
PROMPTS = [[1, 2, 3, 4, 5, 6], [9, 8], [7, 7, 7, 7]]


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    ar = tiny_model(base=AR)
    b = tiny_model(base=CONFIG)
    convert_from_ar(b.model, ar.model)
    return b


def batch(n=6, length=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, length - 1, generator=g) < 0.8
    return {"ids": torch.randint(0, 256, (n, length), generator=g), "mask": mask}


def test_complementary_views_cover_every_scored_token_once(built):
    obj = built.model.objective
    from genloom.toolkit.blocks import sequence_batch
    ids, scored = sequence_batch(batch())
    x_t, masked = obj.views(ids, scored, torch.Generator().manual_seed(1))
    first, second = masked[: ids.shape[0]], masked[ids.shape[0]:]
    assert not bool((first & second).any())
    assert torch.equal(first | second, scored)
    assert torch.equal(x_t == built.ctx.mask_id, masked)
    out = check_objective(built, batch())
    assert torch.isclose(out["_tokens"], scored.sum().float())


def test_broken_variant_independent_views_are_caught(built, monkeypatch):
    """Two independent masks (no complement) overlap and miss tokens: the coverage check fails."""
    import genloom.plugins.fast_dllm_v2.objective as mod
    from genloom.toolkit.blocks import sequence_batch

    def independent(maskable, rate, generator=None):
        a = maskable & (torch.rand(maskable.shape, generator=generator) < rate)
        b = maskable & (torch.rand(maskable.shape, generator=generator) < rate)
        return a, b
    monkeypatch.setattr(mod, "complementary_masks", independent)
    ids, scored = sequence_batch(batch())
    _, masked = built.model.objective.views(ids, scored, torch.Generator().manual_seed(1))
    n = ids.shape[0]
    assert bool((masked[:n] & masked[n:]).any()) or not torch.equal(masked[:n] | masked[n:], scored)


def _run(built, max_new_tokens=12, **options):
    dec = built.ctx.build("decoder", {"name": "fast-dllm-v2", **options})
    return run(built.model, PROMPTS, dec, max_new_tokens=max_new_tokens)


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_block_cache_and_full_width_sub_block_equal_recomputation(built, threshold):
    plain = _run(built, threshold=threshold, cache=False)
    cached = _run(built, threshold=threshold)
    full_width = _run(built, threshold=threshold, sub_block_size=4)
    assert cached.ids == plain.ids == full_width.ids
    assert cached.metrics.extra["positions_computed"] < plain.metrics.extra["positions_computed"]


@torch.no_grad()
def test_sub_block_rows_equal_recomputation_at_a_refresh(built):
    """The sub-block cache's recomputed rows equal a full recomputation (1e-5) while the rest of
    the block is unchanged since the refresh; after the sub-block changes they are an approximation."""
    model = built.model.double()
    try:
        ctx_ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(2))
        block = torch.full((2, 4), built.ctx.mask_id)
        block[:, 0] = 65
        cache = BlockCache(model, 4, 2, 32)
        cache.commit(ctx_ids)
        kept, _ = cache.logits(block, keep=True)
        cols = torch.arange(1, 3)
        rows = cache.rows(block[:, 1:3], cols)
        torch.testing.assert_close(rows, kept[:, 1:3], rtol=0, atol=1e-5)
        changed = block.clone()
        changed[:, 1] = 66
        stale = cache.rows(changed[:, 1:3], cols)
        full = model(torch.cat([ctx_ids, changed], 1), pattern=cache.pattern)[:, 8:]
        assert (stale - full[:, 1:3]).abs().max() > 1e-6  # the rest of the block's keys/values are stale
        cache.drop_kept()
        fresh, _ = cache.logits(changed)
        torch.testing.assert_close(fresh, full, rtol=0, atol=1e-5)
    finally:
        model.float()


def test_sub_blocks_compute_fewer_positions(built):
    full = _run(built, threshold=1.0, max_new_tokens=16)
    sub = _run(built, threshold=1.0, max_new_tokens=16, sub_block_size=2)
    assert sub.metrics.extra["positions_computed"] < full.metrics.extra["positions_computed"]
    assert all(s == 4 for s in sub.metrics.extra["block_steps"])  # threshold 1: one token per step


def test_broken_variant_no_refresh_is_caught(built, monkeypatch):
    """A sub-block cache that never refreshes the kept block (reuses the first sub-block's keys/values
    for the whole block) no longer equals the full-width decoder."""
    from genloom.toolkit import blocks
    base = _run(built, threshold=1.0, max_new_tokens=16, sub_block_size=4)
    original = blocks.BlockDecoder.block_logits

    def stale_refresh(self, session, block, keep=False):
        if keep and self.cache.kept is not None:  # skip the refresh: keep reusing the old keys/values
            return session.scratch["last"]
        out = original(self, session, block, keep)
        session.scratch["last"] = out
        return out
    monkeypatch.setattr(blocks.BlockDecoder, "block_logits", stale_refresh)
    monkeypatch.setattr(BlockCache, "drop_kept", lambda self: None)
    broken = _run(built, threshold=1.0, max_new_tokens=16, sub_block_size=1)
    assert broken.ids != base.ids


def test_contract_and_config_errors(built):
    check_decoder(built, {"name": "fast-dllm-v2", "sub_block_size": 2})
    from genloom.core.errors import ConfigError
    with pytest.raises(ConfigError, match="sub_block_size"):
        built.ctx.build("decoder", {"name": "fast-dllm-v2", "sub_block_size": 8})
    from genloom.plugins.fast_dllm_v2 import FastDLLMv2DecoderConfig
    with pytest.raises(ValueError, match="sub_block_size"):
        FastDLLMv2DecoderConfig(sub_block_size=2, cache=False)
