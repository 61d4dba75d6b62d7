"""Hyperschedules: the staircase loss is the next-token loss, the shared one MDLM's; epsilon 0 is
absorbing; the causal prefix cache equals recomputation; staircase decoding is greedy AR decoding."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.hyperschedules.objective import schedule_for
from genloom.testing import check_decoder, check_objective, tiny_model
from genloom.toolkit.blocks import convert_from_ar

BACKBONE = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}
AR = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": BACKBONE, "objective": {"name": "next-token"}}


def hs(**objective):
    return {**AR, "objective": {"name": "hyperschedules", **objective}, "decoder": {"name": "hyperschedules"}}


@pytest.fixture(scope="module")
def ar():
    torch.manual_seed(0)
    return tiny_model(base=AR)


@pytest.fixture(scope="module")
def staircase(ar):
    built = tiny_model(base=hs(schedule="staircase", attention="causal"))
    convert_from_ar(built.model, ar.model)
    return built


def window_batch(n=3, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length - 1, dtype=torch.bool)
    mask[0, 5:] = False
    return {"ids": torch.randint(0, 256, (n, length), generator=g), "mask": mask}


@torch.no_grad()
def test_staircase_exact_loss_is_the_next_token_loss(ar, staircase):
    batch = window_batch()
    exact = staircase.model.objective.exact_loss(staircase.model, batch)
    torch.testing.assert_close(exact.float(), ar.model.loss(batch)["loss"], rtol=0, atol=1e-5)


@torch.no_grad()
def test_broken_variant_full_attention_staircase_is_not_the_ar_loss(ar):
    """The same schedule read by a bidirectional denoiser is a different model: the equality fails."""
    built = tiny_model(base=hs(schedule="staircase", attention="full"))
    convert_from_ar(built.model, ar.model)
    batch = window_batch()
    assert abs(float(built.model.objective.exact_loss(built.model, batch)) - float(ar.model.loss(batch)["loss"])) > 1e-3


@torch.no_grad()
def test_shared_schedule_step_loss_is_mdlms():
    torch.manual_seed(1)
    built = tiny_model(base=hs(schedule="shared", steps=10))
    obj, model = built.model.objective, built.model
    batch = window_batch(4, 11, 2)
    ids, scored = obj.scored(batch)
    schedule = schedule_for(obj.config, int(scored.sum(-1).max()))
    u = torch.rand(ids.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for step in (1, 4, 10):
        t = torch.full((4,), step)
        nats, noised = obj.step_loss(model, ids, scored, schedule, t, u)
        assert torch.equal(noised, scored & (u < step / 10))
        logits = model(torch.where(noised, torch.full_like(ids, built.ctx.mask_id), ids), pattern=obj.pattern).float()
        logits[..., built.ctx.mask_id] = float("-inf")
        ce = -torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
        # MDLM, linear alpha on T steps: T * (alpha_s - alpha_t) / (1 - alpha_t) = 1 / (t / T)
        torch.testing.assert_close(nats.float(), (ce * noised).sum() / (step / 10), rtol=1e-5, atol=1e-5)


def test_epsilon_zero_is_absorbing_and_epsilon_mixes_uniform_tokens():
    built = tiny_model(base=hs(schedule="shared", steps=8, epsilon=0.5))
    obj = built.model.objective
    ids, scored = obj.scored(window_batch(8, 17))
    schedule = schedule_for(obj.config, 16)
    g = torch.Generator().manual_seed(0)
    u, v = torch.rand(ids.shape, generator=g, dtype=torch.float64), torch.rand(ids.shape, generator=g)
    noise = torch.randint(0, 256, ids.shape, generator=g)
    t = torch.full((8,), 6)
    x_hybrid, noised, _ = obj.corrupt(ids, scored, schedule, t, u, v, noise)
    obj.config.epsilon = 0.0
    try:
        x_absorb, noised0, _ = obj.corrupt(ids, scored, schedule, t, u, v, noise)
    finally:
        obj.config.epsilon = 0.5
    assert torch.equal(noised, noised0) and torch.equal(x_absorb == built.ctx.mask_id, noised0)
    uniform = noised & (x_hybrid != built.ctx.mask_id)
    assert bool(uniform.any()) and torch.equal(x_hybrid[uniform], noise[uniform])
    check_objective(built, window_batch())


PROMPTS = [[72, 101, 108], [40, 41], [1, 2, 3, 4, 5]]


def test_staircase_decoding_is_greedy_ar_decoding_and_the_cache_is_exact(ar, staircase):
    greedy = run(ar.model, PROMPTS, ar.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=7)
    results = {}
    for cache in (True, False):
        dec = staircase.ctx.build("decoder", {"name": "hyperschedules", "schedule": "staircase", "attention": "causal", "cache": cache})
        results[cache] = run(staircase.model, PROMPTS, dec, max_new_tokens=7)
    assert results[True].ids == results[False].ids == greedy.ids
    cached, plain = results[True].metrics.extra["positions_computed"], results[False].metrics.extra["positions_computed"]
    assert cached < plain / 2  # the fixed prefix is not recomputed


@torch.no_grad()
def test_cached_logits_equal_recomputation(staircase):
    from genloom.plugins.hyperschedules import decoder as mod
    seen = []
    original = mod.HyperscheduleDecoder.network

    def record(self, session):
        out = original(self, session)
        s = session.scratch
        full = mod.denoise(session.model, s["canvas"], "causal", s["canvas_valid"])
        cols = torch.arange(s["gen_start"], s["canvas"].shape[1])
        masked = (s["canvas"] == self.mask_id)[:, cols]
        seen.append((out[:, cols][masked] - full[:, cols][masked]).abs().max().item())
        return out
    dec = staircase.ctx.build("decoder", {"name": "hyperschedules", "schedule": "line", "width": 3.0, "attention": "causal", "steps": 5})
    dec.network = record.__get__(dec)
    staircase.model.double()
    try:
        run(staircase.model, PROMPTS, dec, max_new_tokens=7)
    finally:
        staircase.model.float()
    assert seen and max(seen) < 1e-5


def test_broken_cache_is_caught(staircase, monkeypatch):
    """A cache that keeps the whole pass (masked columns included) is stale: the output changes."""
    base = run(staircase.model, PROMPTS, staircase.ctx.build("decoder", {"name": "hyperschedules", "schedule": "line", "width": 3.0, "attention": "causal", "steps": 4}), max_new_tokens=7)
    from genloom.core.state import KVCache
    monkeypatch.setattr(KVCache, "rollback", lambda self, lengths: None)
    broken = run(staircase.model, PROMPTS, staircase.ctx.build("decoder", {"name": "hyperschedules", "schedule": "line", "width": 3.0, "attention": "causal", "steps": 4}), max_new_tokens=7)
    assert broken.ids != base.ids


def test_correction_revises_decoded_tokens():
    torch.manual_seed(0)
    built = tiny_model(base=hs(schedule="shared"))
    dec = built.ctx.build("decoder", {"name": "hyperschedules", "schedule": "shared", "steps": 3, "correct": True, "correct_threshold": 0.5})
    calls = []

    def fake(self, session):
        canvas = session.scratch["canvas"]
        logits = torch.zeros(*canvas.shape, built.ctx.vocab_size)
        logits[..., 65 if not calls else 66] = 20.0  # predicts 'A' first, then 'B' everywhere
        calls.append(1)
        return logits
    dec.network = fake.__get__(dec)
    res = run(built.model, [[1, 2]], dec, max_new_tokens=6)
    assert res.ids == [[66] * 6] and res.metrics.extra["revised"] > 0


def test_contracts_and_config_errors(staircase):
    check_decoder(staircase, {"name": "hyperschedules", "schedule": "staircase", "attention": "causal"})
    from genloom.plugins.hyperschedules import HyperschedulesDecoderConfig, HyperschedulesObjectiveConfig
    with pytest.raises(ValueError, match="epsilon"):
        HyperschedulesObjectiveConfig(epsilon=1.0)
    with pytest.raises(ValueError, match="width"):
        HyperschedulesDecoderConfig(width=0.0)
    with pytest.raises(ValueError, match="cache"):
        staircase.ctx.build("decoder", {"name": "hyperschedules", "attention": "causal", "correct": True})
