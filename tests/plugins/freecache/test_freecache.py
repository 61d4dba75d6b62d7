"""FreeCache: refresh every step is the uncached decoder exactly; reuse recomputes only the current
block between refreshes (counted); guided steps unmask only tokens the AR guide agrees with."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import run
from genloom.testing import check_decoder, tiny_model
from genloom.toolkit.canvas import ConfidenceCanvasDecoder
from genloom.toolkit.canvas_config import CanvasDecoderConfig

BACKBONE = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}
MDM = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": BACKBONE, "objective": {"name": "radd"}}
GUIDE = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {**BACKBONE, "d_model": 16}, "objective": {"name": "next-token"}}
PROMPTS = [[10, 11, 12, 13], [20], [30, 31]]


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return tiny_model(base=MDM)


def _run(built, node, max_new_tokens=12, seed=0):
    dec = built.ctx.build("decoder", node)
    return run(built.model, PROMPTS, dec, max_new_tokens=max_new_tokens, seed=seed), dec


@pytest.mark.parametrize("options", [{"block_length": 4, "steps": 12}, {"block_length": 6, "steps": 4}, {"steps": 6, "temperature": 1.0}])
def test_refresh_every_step_is_uncached_decoding(built, options):
    uncached = run(built.model, PROMPTS, ConfidenceCanvasDecoder(CanvasDecoderConfig(**options), built.ctx, built.ctx.mask_id), max_new_tokens=12)
    registry_baseline, _ = _run(built, {"name": "masked-diffusion", **options})
    cached, _ = _run(built, {"name": "freecache", "refresh_every": 1, **options})
    assert cached.ids == uncached.ids == registry_baseline.ids
    assert cached.metrics.forward_passes == uncached.metrics.forward_passes
    assert cached.metrics.extra["positions_computed"] == 3 * (4 + 12) * cached.metrics.forward_passes["target"]


def test_reuse_recomputes_only_the_block_between_refreshes(built):
    res, _ = _run(built, {"name": "freecache", "refresh_every": 3, "block_length": 4, "steps": 12})
    extra = res.metrics.extra
    L, B, steps = 4 + 12, 3, 12
    refreshes = extra["refreshes"]
    assert refreshes == 6  # steps 0, 3 | 4, 7 | 8, 11: every block start and every third step
    assert extra["positions_computed"] == B * (refreshes * L + (steps - refreshes) * 4)
    assert extra["positions_computed"] < B * L * steps


def test_broken_variant_stale_reuse_is_not_exact(built):
    """Never refreshing after the first pass (reuse across blocks) no longer equals uncached decoding
    on this model; the refresh rule is what the exactness test checks."""
    exact, _ = _run(built, {"name": "freecache", "refresh_every": 1, "block_length": 4, "steps": 12})
    from genloom.plugins.freecache import decoder as mod
    dec = built.ctx.build("decoder", {"name": "freecache", "refresh_every": 1000, "block_length": 4, "steps": 12})
    original = mod.FreeCache.network

    def never_refresh(self, session):
        s = session.scratch
        if s["refreshed_at"] is not None:
            s["refreshed_block"] = self.region(session).any(0).nonzero().min().item()
        return original(self, session)
    dec.network = never_refresh.__get__(dec)
    broken = run(built.model, PROMPTS, dec, max_new_tokens=12)
    assert broken.metrics.extra["refreshes"] == 1
    assert broken.ids != exact.ids


@torch.no_grad()
def test_guided_steps_unmask_only_what_the_guide_agrees_with(built):
    torch.manual_seed(3)
    guide = tiny_model(base=GUIDE).model.eval()
    dec = built.ctx.build("decoder", {"name": "freecache", "block_length": 4, "refresh_every": 1, "guide": GUIDE})
    dec._guide = guide
    canvases = []
    original = type(dec).step

    def recording_step(self, session):
        before = session.scratch["canvas"].clone()
        original(self, session)
        canvases.append((before, session.scratch["canvas"].clone()))
    dec.step = recording_step.__get__(dec)
    res = run(built.model, [[10, 11, 12, 13]], dec, max_new_tokens=8)
    assert len(res.ids[0]) == 8 and res.metrics.forward_passes["guide"] == len(canvases)
    mask = built.ctx.mask_id
    fallbacks = 0
    for before, after in canvases:
        new = (before == mask) & (after != mask)
        assert int(new.sum()) >= 1  # at least one per step
        cols = new[0].nonzero().flatten().tolist()
        # the guide's greedy choice at each newly unmasked position, given the canvas after the step
        filled = torch.where(after == mask, torch.zeros_like(after), after)
        guess = guide(filled, pattern=guide.objective.pattern).argmax(-1)
        agree = [int(guess[0, c - 1]) == int(after[0, c]) for c in cols]
        if not all(agree):
            assert len(cols) == 1  # a disagreement can only be the single fallback token
            fallbacks += 1
    assert len(canvases) < 8 or fallbacks == len(canvases)  # agreement saves steps unless every step fell back


def test_contract_and_config_errors(built):
    check_decoder(built, {"name": "freecache", "block_length": 3})
    from genloom.plugins.freecache import FreeCacheConfig
    with pytest.raises(ValueError, match="refresh_every"):
        FreeCacheConfig(refresh_every=0)
