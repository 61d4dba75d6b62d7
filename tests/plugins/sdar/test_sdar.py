"""SDAR: with block size 1 the converted model is the AR model (logits, loss, greedy decoding);
the block cache is exact; threshold decoding commits at least one token per step."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import run
from genloom.core.pattern import CAUSAL
from genloom.toolkit.blocks import convert_from_ar
from genloom.testing import check_decoder, check_objective, tiny_model
from genloom.toolkit.blocks import shifted_block_logits

BACKBONE = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}
AR = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": BACKBONE, "objective": {"name": "next-token"}}


def sdar(block_size, **decoder):
    return {**AR, "objective": {"name": "sdar", "block_size": block_size}, "decoder": {"name": "sdar", **decoder}}


@pytest.fixture(scope="module")
def ar():
    torch.manual_seed(0)
    return tiny_model(base=AR)


@pytest.fixture(scope="module")
def converted(ar):
    built = tiny_model(base=sdar(1))
    assert convert_from_ar(built.model, ar.model) > 0
    return built


def x0(n=3, length=9, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_block_size_one_logits_are_the_ar_models(ar, converted):
    ids = x0()
    ar_logits = ar.model.double()(ids, pattern=CAUSAL)
    dm = converted.model.double()
    V = ar_logits.shape[-1]
    for masked_fraction in (0.0, 0.5, 1.0):
        masked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < masked_fraction
        x_t = torch.where(masked, torch.full_like(ids, converted.ctx.mask_id), ids)
        logits = shifted_block_logits(dm, x_t, ids, 1)
        torch.testing.assert_close(logits[:, 1:, :V], ar_logits[:, :-1], rtol=0, atol=1e-10)
    ar.model.float(), dm.float()


@torch.no_grad()
def test_broken_variant_unshifted_reading_is_not_the_ar_model(ar, converted):
    """Reading position j's prediction at row j (no shift) breaks the equality."""
    ids = x0()
    dm = converted.model
    from genloom.toolkit.blocks import NoisyCleanPattern
    x_t = torch.full_like(ids, converted.ctx.mask_id)
    out = dm(torch.cat([x_t, ids], 1), pattern=NoisyCleanPattern(block_size=1, seq_len=ids.shape[1]))[:, : ids.shape[1]]
    ar_logits = ar.model(ids, pattern=CAUSAL)
    assert (out[:, 1:, :256] - ar_logits[:, :-1, :256]).abs().max() > 1e-3


def test_block_size_one_loss_is_the_next_token_loss(ar, converted):
    batch = {"ids": x0(4, 10, 3), "mask": torch.ones(4, 9, dtype=torch.bool)}
    batch["mask"][0, 5:] = False
    obj = converted.model.objective
    ids = batch["ids"]
    scored = torch.ones_like(ids, dtype=torch.bool)
    scored[:, 1:] = batch["mask"]
    scored[:, 0] = False
    with torch.no_grad():
        out = obj.loss_given_noise(converted.model, ids, scored, scored, torch.ones(ids.shape))  # t = 1: every token masked
        ar_out = ar.model.loss(batch)
    # the mask token is excluded from the distribution; the AR model never gives it mass, up to its one added row
    torch.testing.assert_close(out["loss"], ar_out["loss"], rtol=0, atol=1e-5)


def test_block_size_one_decoding_is_greedy_ar_decoding(ar, converted):
    prompts = [[72, 101, 108], [40, 41]]
    greedy = run(ar.model, prompts, ar.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=8)
    dec = converted.ctx.build("decoder", {"name": "sdar", "block_size": 1, "threshold": 0.9})
    res = run(converted.model, prompts, dec, max_new_tokens=8)
    assert res.ids == greedy.ids


@pytest.fixture(scope="module")
def block4(ar):
    built = tiny_model(base=sdar(4))
    convert_from_ar(built.model, ar.model)
    return built


PROMPTS = [[1, 2, 3, 4, 5, 6], [9, 8], [7, 7, 7, 7]]  # tails of 2, 2 and 0 tokens in the first block


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1.0])
def test_block_cache_equals_recomputation(block4, threshold):
    def go(cache):
        dec = block4.ctx.build("decoder", {"name": "sdar", "threshold": threshold, "cache": cache})
        return run(block4.model, PROMPTS, dec, max_new_tokens=12)
    cached, plain = go(True), go(False)
    assert cached.ids == plain.ids
    assert cached.metrics.extra["block_steps"] == plain.metrics.extra["block_steps"]
    assert cached.metrics.extra["positions_computed"] < plain.metrics.extra["positions_computed"]


def test_threshold_steps_per_block(block4):
    def steps(threshold):
        dec = block4.ctx.build("decoder", {"name": "sdar", "threshold": threshold})
        return run(block4.model, [[7, 7, 7, 7]], dec, max_new_tokens=12).metrics.extra["block_steps"]
    assert steps(0.0) == [1, 1, 1]           # everything above 0: one step per block
    assert steps(1.0) == [4, 4, 4]           # nothing above 1: the at-least-one rule, one token per step
    assert all(1 <= s <= 4 for s in steps(0.5))


def test_cache_broken_variant_is_caught(block4, monkeypatch):
    """Dropping finished blocks from the cache (never committing them) changes the output."""
    from genloom.toolkit.canvas_cache import BlockCache
    base = run(block4.model, PROMPTS, block4.ctx.build("decoder", {"name": "sdar", "threshold": 1.0}), max_new_tokens=12)
    monkeypatch.setattr(BlockCache, "commit", lambda self, block, valid=None: None)
    broken = run(block4.model, PROMPTS, block4.ctx.build("decoder", {"name": "sdar", "threshold": 1.0}), max_new_tokens=12)
    assert broken.ids != base.ids


def test_conversion_from_a_run_and_contracts(tmp_path, ar, block4):
    from genloom.core.runio import save_weights
    import yaml
    run_dir = tmp_path / "ar"
    save_weights(run_dir, ar.model)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(AR))
    built = tiny_model(base={**sdar(4), "objective": {"name": "sdar", "block_size": 4, "ar_run": str(run_dir)}})
    batch = {"ids": x0(2, 9), "mask": torch.ones(2, 8, dtype=torch.bool)}
    check_objective(built, batch)
    assert int(built.model.objective.converted) == 1
    emb = dict(built.model.named_parameters())
    src = dict(ar.model.named_parameters())
    name = next(n for n in src if "embed" in n)
    torch.testing.assert_close(emb[name][:src[name].shape[0]], src[name])
    check_decoder(block4, "sdar")


def test_bad_config_names_the_field():
    from genloom.plugins.sdar import SDARDecoderConfig, SDARObjectiveConfig
    with pytest.raises(ValueError, match="block_size"):
        SDARObjectiveConfig(block_size=0)
    from pathlib import Path

    from genloom.core import config as config_mod
    from genloom.core.errors import ConfigError

    cfg = Path(__file__).resolve().parents[3] / "configs" / "sdar.yaml"
    with pytest.raises(ConfigError, match=r"decoder.threshold.*1.5"):  # the range is declared once and checked by the core
        config_mod.validate(config_mod.compose(cfg, ["decoder.threshold=1.5"]))
    assert SDARDecoderConfig(threshold=0.5).threshold == 0.5
