"""Canvas caches: cached logits equal recomputation (1e-5, float64 model), and they recompute fewer positions."""

from __future__ import annotations

import pytest
import torch

from genloom.core.pattern import FULL, block_causal
from genloom.testing import tiny_model
from genloom.toolkit.canvas_cache import BlockCache, PrefixCache, StaleCache, prompt_isolated

BASE = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
        "objective": {"name": "radd"}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model(base=BASE).model.double().eval()


def ids(B, L, seed=0, mask_every=None, mask_id=257):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (B, L), generator=g)
    if mask_every:
        x[:, ::mask_every] = mask_id
    return x


@torch.no_grad()
def test_prefix_cache_equals_recomputation(model):
    prompt, answer = ids(3, 5, 1), ids(3, 8, 2, mask_every=2)
    cache = PrefixCache(model, prompt, torch.ones_like(prompt, dtype=torch.bool), capacity=8)
    for step in range(3):  # the cache is reused, the answer changes
        answer[:, step] = 7 + step
        cached = cache.logits(answer)
        full = model(torch.cat([prompt, answer], 1), pattern=prompt_isolated(5))[:, 5:]
        torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    assert cache.positions == 3 * 5 + 3 * 3 * 8  # the prompt once, the answer every step
    # the broken variant: full attention lets the prompt see the answer; its KV is then not reusable
    assert (cache.logits(answer) - model(torch.cat([prompt, answer], 1), pattern=FULL)[:, 5:]).abs().max() > 1e-4


@torch.no_grad()
def test_prefix_cache_with_ragged_prompts(model):
    prompts = [[1, 2, 3, 4, 5], [9, 8]]
    from genloom.core.generation import pad_left
    prompt, valid = pad_left(prompts, 0)
    answer = ids(2, 6, 3, mask_every=3)
    cached = PrefixCache(model, prompt, valid, capacity=6).logits(answer)
    for b, p in enumerate(prompts):
        row = torch.cat([torch.tensor([p]), answer[b:b + 1]], 1)
        torch.testing.assert_close(cached[b:b + 1], model(row, pattern=prompt_isolated(len(p)))[:, len(p):], rtol=0, atol=1e-5)


@torch.no_grad()
def test_block_cache_equals_recomputation(model):
    n = 3
    seq = ids(2, 12, 4)
    cache = BlockCache(model, n, 2, 32)
    cache.commit(seq[:, :n])
    for b in range(1, 4):
        noisy = seq[:, b * n:(b + 1) * n].clone()
        noisy[:, 1] = 257
        cached, clean = cache.logits(noisy)
        full = model(torch.cat([seq[:, :b * n], noisy], 1), pattern=block_causal(n))
        torch.testing.assert_close(cached, full[:, b * n:], rtol=0, atol=1e-5)
        torch.testing.assert_close(clean, full[:, (b - 1) * n:b * n], rtol=0, atol=1e-5)  # the pending block rode along
        again, none = cache.logits(noisy)  # the second call of a block sees only the cache
        assert none is None
        torch.testing.assert_close(again, cached, rtol=0, atol=1e-5)
        cache.commit(seq[:, b * n:(b + 1) * n])
    assert cache.positions == 2 * (3 * n + 3 * 2 * n)  # every clean block once, each block twice
    # the broken variant: a bidirectional recomputation is not what a block cache can reproduce
    assert (cached - model(torch.cat([seq[:, :9], noisy], 1), pattern=FULL)[:, 9:]).abs().max() > 1e-4


@torch.no_grad()
def test_stale_cache_is_exact_after_a_refresh_and_approximate_after_changes(model):
    canvas = ids(2, 10, 5, mask_every=2)
    valid = torch.ones_like(canvas, dtype=torch.bool)
    valid[1, :2] = False  # a left-padded row
    cache = StaleCache(model, valid)
    refreshed = cache.refresh(canvas)
    torch.testing.assert_close(refreshed, model(canvas, valid=valid, pattern=FULL), rtol=0, atol=1e-5)
    columns = torch.arange(4, 8)
    same = cache.logits(canvas, columns)  # nothing changed since the refresh: exact
    torch.testing.assert_close(same, model(canvas, valid=valid, pattern=FULL), rtol=0, atol=1e-5)
    assert cache.positions == 2 * 10 + 2 * 4
    changed = canvas.clone()
    changed[:, 4] = 65  # inside the active set
    stale = cache.logits(changed, columns)
    full = model(changed, valid=valid, pattern=FULL)
    # only the other columns' keys/values are stale: a real approximation, measurable
    assert (stale[:, columns] - full[:, columns]).abs().max() > 1e-6
    torch.testing.assert_close(cache.refresh(changed), full, rtol=0, atol=1e-5)


def test_canvas_cache_from_a_static_cache():
    from genloom.core.state import StaticKVCache
    from genloom.toolkit.canvas_cache import CanvasKVCache
    cache = CanvasKVCache.like(StaticKVCache(2, 3, 4, 8, 16))
    assert type(cache) is CanvasKVCache and cache.capacity == 16 and cache.k[0].shape == (3, 4, 16, 8)
