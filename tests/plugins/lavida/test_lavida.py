"""LaViDa: complementary views cover every answer token once; the prefix KV cache equals
recomputation (1e-5); the timestep shift is a monotone remap; a short training run learns digits."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.lavida import data
from genloom.plugins.lavida.decoder import masks_left, shift
from genloom.plugins.lavida.objective import prefixed_logits
from genloom.testing import check_objective, tiny_model
from genloom.toolkit.canvas_cache import prompt_isolated

CONFIG = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
          "objective": {"name": "lavida"}, "decoder": {"name": "lavida"}}


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return tiny_model(base=CONFIG)


@pytest.fixture(scope="module")
def splits():
    return data.digits()


def test_complementary_views_cover_every_answer_token_once(built, splits):
    train, _ = splits
    b = data.batch(train, torch.arange(8))
    obj = built.model.objective
    _, answers = obj.split(b)
    x_t, masked = obj.views(answers, torch.Generator().manual_seed(0))
    assert not bool((masked[:8] & masked[8:]).any()) and bool((masked[:8] | masked[8:]).all())
    assert torch.equal(x_t == built.ctx.mask_id, masked)
    out = check_objective(built, b)
    assert float(out["_tokens"]) == answers.numel()


@torch.no_grad()
def test_prefix_cache_equals_recomputation(built, splits):
    _, test = splits
    model = built.model.double()
    try:
        pixels = test["pixels"][:3]
        prefix = model.objective.encoder(pixels)
        answer = test["answers"][:3].clone()
        answer[:, ::2] = built.ctx.mask_id
        state = model.init_state(3, 16)
        model.backbone(prefix, pattern=prompt_isolated(0), state=state)
        cached = prefixed_logits(model, prefix, answer, state=state, pattern=prompt_isolated(0))
        full = prefixed_logits(model, prefix, answer)
        torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
        # the broken variant: with full attention the image would attend to the answer: not cacheable
        from genloom.core.pattern import FULL
        assert (prefixed_logits(model, prefix, answer, pattern=FULL) - cached).abs().max() > 1e-4
    finally:
        model.float()


def test_cached_decoding_equals_uncached(built, splits):
    _, test = splits
    prompts = test["pixels"][:5].tolist()
    go = lambda cache: run(built.model, prompts, built.ctx.build("decoder", {"name": "lavida", "cache": cache}), max_new_tokens=6)  # noqa: E731
    cached, plain = go(True), go(False)
    assert cached.ids == plain.ids
    assert cached.metrics.extra["positions_computed"] < plain.metrics.extra["positions_computed"]


def test_timestep_shift_is_a_monotone_remap():
    ts = torch.linspace(0, 1, 101).tolist()
    for s in (0.3, 1.0, 3.0):
        vals = [shift(t, s) for t in ts]
        assert vals[0] == 0.0 and abs(vals[-1] - 1.0) < 1e-12
        assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert all(abs(shift(t, 1.0) - t) < 1e-12 for t in ts)
    assert shift(0.5, 3.0) > 0.5 > shift(0.5, 0.3)  # s > 1 keeps more masks early
    left = [masks_left(6, k, 3, 3.0) for k in range(4)]
    assert left[0] == 6 and left[-1] == 0 and all(b <= a for a, b in zip(left, left[1:]))


def test_bad_prompts_and_config(built):
    from genloom.core.errors import GenerationError
    with pytest.raises(GenerationError, match="pixel tokens"):
        run(built.model, [[1, 2, 3]], built.ctx.build("decoder", {"name": "lavida"}), max_new_tokens=6)
    from genloom.plugins.lavida import LaViDaObjectiveConfig
    with pytest.raises(ValueError, match="patch"):
        LaViDaObjectiveConfig(patch=3)


@pytest.mark.slow
def test_a_short_training_run_names_the_digits(splits):
    """~20 s: 300 steps of batch 64; label accuracy on 100 held-out digits well above chance."""
    torch.manual_seed(0)
    b = tiny_model(base={**CONFIG, "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4}})
    train, test = splits
    opt = torch.optim.AdamW(b.model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    b.model.train()
    for _ in range(300):
        idx = torch.randint(0, len(train["labels"]), (64,), generator=g)
        loss = b.model.loss(data.batch(train, idx))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = run(b.model, test["pixels"][:100].tolist(), b.ctx.build("decoder", {"name": "lavida", "steps": 3}), max_new_tokens=6, eos_id=256)
    answers = [bytes(t for t in ids if t < 256).decode(errors="replace") for ids in res.ids]
    acc = sum(a == data.NAMES[int(y)] + "." for a, y in zip(answers, test["labels"][:100])) / 100
    assert acc > 0.5
