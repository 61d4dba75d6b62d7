"""The next-scale decoder: K passes, cached decoding equals the full forward, guidance, processors."""

from __future__ import annotations

import pytest
import torch
from var_helpers import LENGTHS, L, build_tiny

from genloom.core.generation import run
from genloom.plugins.var.decoder import NextScaleDecoder
from genloom.testing import check_decoder

K = len(LENGTHS)


class Recording(NextScaleDecoder):
    """Keeps the session so a test can read the per-scale logits the decoder sampled from."""

    def start(self, session):
        self.session = session
        super().start(session)


def recording(built, **fields) -> Recording:
    node = {"name": "next-scale", **fields}
    config = built.ctx.build("decoder", node).config
    return Recording(config, built.ctx)


@pytest.fixture(scope="module")
def built():
    return build_tiny()


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_exactly_K_transformer_passes(built, cfg_scale):
    calls = []
    handle = built.model.backbone.register_forward_hook(lambda m, a, o: calls.append(o.shape))
    try:
        dec = recording(built, cfg_scale=cfg_scale)
        result = run(built.model, [[1], [2], [3]], dec, max_new_tokens=1000, seed=0)
    finally:
        handle.remove()
    batch = 6 if cfg_scale else 3  # guidance doubles the batch inside one pass
    assert [tuple(c) for c in calls] == [(batch, n, 32) for n in LENGTHS]
    assert result.metrics.forward_passes == {"target": K}
    assert [len(ids) for ids in result.ids] == [L] * 3  # not sum(s_k^2) = 30 passes
    assert result.metrics.tokens_per_forward == L / K


def test_cached_scale_by_scale_decoding_equals_the_full_forward(built):
    model, objective = built.model, built.model.objective
    dec = recording(built, cfg_scale=0.0)
    result = run(model, [[0], [5], [9]], dec, max_new_tokens=L, seed=1)
    cached = torch.cat(dec.session.scratch["scale_logits"], 1)
    ids = model.tokenizer.split_scales(torch.tensor(result.ids))
    with torch.no_grad():
        full = objective.logits(model, ids, torch.tensor([0, 5, 9]))
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_guidance_combines_class_and_null_class_passes(built):
    model, objective = built.model, built.model.objective
    dec = recording(built, cfg_scale=1.5, cfg_schedule="linear")
    labels = torch.tensor([2, 7])
    result = run(model, [[2], [7]], dec, max_new_tokens=L, seed=2)
    guided = torch.cat(dec.session.scratch["scale_logits"], 1)
    ids = model.tokenizer.split_scales(torch.tensor(result.ids))
    with torch.no_grad():
        cond = objective.logits(model, ids, labels)
        uncond = objective.logits(model, ids, torch.full_like(labels, model.head.null_class))
    t = torch.repeat_interleave(torch.tensor([1.5 * k / (K - 1) for k in range(K)]), torch.tensor(LENGTHS))[None, :, None]
    torch.testing.assert_close(guided, (1 + t) * cond - t * uncond, atol=1e-5, rtol=0)
    # scale 1 has no guidance under the linear schedule, the last scale the full 1.5
    torch.testing.assert_close(guided[:, 0], cond[:, 0], atol=1e-5, rtol=0)


def test_processors_act_on_every_token_of_a_scale(built):
    top1 = built.ctx.build("processor", {"name": "top-k", "k": 1})
    dec = recording(built, cfg_scale=1.0)
    result = run(built.model, [[4], [8]], dec, max_new_tokens=L, processors=[top1], seed=3)
    logits = torch.cat(dec.session.scratch["scale_logits"], 1)
    assert torch.equal(torch.tensor(result.ids), logits.argmax(-1))


def test_seeded_sampling_reproduces_and_differs_across_seeds(built):
    a = run(built.model, [[1], [1]], recording(built), max_new_tokens=L, seed=0).ids
    b = run(built.model, [[1], [1]], recording(built), max_new_tokens=L, seed=0).ids
    c = run(built.model, [[1], [1]], recording(built), max_new_tokens=L, seed=1).ids
    assert a == b and a != c


def test_short_budget_and_bad_labels(built):
    result = run(built.model, [[1]], recording(built), max_new_tokens=7, seed=0)
    assert len(result.ids[0]) == 7
    assert result.metrics.forward_passes == {"target": 3}  # scales 1-3 were needed for 7 tokens
    with pytest.raises(ValueError, match="class label"):
        run(built.model, [[10]], recording(built), max_new_tokens=L)


def test_conformance_kit_decoder(built):
    check_decoder(built, {"name": "next-scale", "cfg_scale": 1.0})
