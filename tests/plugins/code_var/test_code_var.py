"""Collaborative decoding (decoder ``code-var``): drafter for scales 1..N, refiner for the rest.

Defining property: with N = all scales the output equals the large model's own next-scale sampling
token for token (same seed) and the large model runs exactly N passes; with N < K the drafter runs
N passes, the refiner K - N, and the refiner's one-pass read of the drafted scales gives the logits
of its full teacher-forced forward.
"""

import pytest
import torch

from genloom.core.generation import run
from genloom.testing import tiny_model

SCALES = (1, 2, 3, 4)
K = len(SCALES)
TOKENIZER = {"name": "var-vq", "scales": list(SCALES), "codebook_size": 32, "latent_channels": 8, "hidden_channels": 8, "image_shape": [1, 8, 8], "fit_steps": 0}


def var_config(d_model, n_layers):
    return {
        "data": {"name": "digits", "image_size": 8},
        "tokenizer": TOKENIZER,
        "head": {"name": "next-scale"},
        "backbone": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": 2, "rope": False},
        "objective": {"name": "next-scale", "cond_drop": 0.1},
    }


LARGE, SMALL = var_config(32, 2), var_config(16, 1)
PROMPTS = [[c] for c in range(4)]


@pytest.fixture(scope="module")
def large():
    built = tiny_model(base=LARGE, seed=0)
    return built.model.eval() and built


def code(built, draft_scales, share=True, **fields):
    """A code-var decoder whose refiner shares the drafter's tokenizer weights (or not)."""
    dec = built.ctx.build("decoder", {"name": "code-var", "refiner": SMALL, "draft_scales": draft_scales, **fields})
    if share:
        dec.refiner.tokenizer.load_state_dict(built.model.tokenizer.state_dict())
    dec.refiner.eval()
    return dec


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
@pytest.mark.parametrize("draft_scales", [K, K + 3])
def test_all_scales_drafted_equals_the_large_model(large, draft_scales, cfg_scale):
    """N >= K: token for token the large model's next-scale sampling under the same seed, K passes,
    the refiner never runs (nor is it needed)."""
    reference = run(large.model, PROMPTS, large.ctx.build("decoder", {"name": "next-scale", "cfg_scale": cfg_scale}), max_new_tokens=30, seed=3)
    dec = large.ctx.build("decoder", {"name": "code-var", "draft_scales": draft_scales, "cfg_scale": cfg_scale})
    out = run(large.model, PROMPTS, dec, max_new_tokens=30, seed=3)
    assert out.ids == reference.ids
    assert out.metrics.forward_passes == {"target": K}


@pytest.mark.parametrize("draft_scales", [1, 2, 3])
def test_drafter_runs_exactly_n_passes_and_the_refiner_the_rest(large, draft_scales):
    dec = code(large, draft_scales)
    reference = run(large.model, PROMPTS, large.ctx.build("decoder", {"name": "next-scale"}), max_new_tokens=30, seed=3)
    out = run(large.model, PROMPTS, dec, max_new_tokens=30, seed=3)
    assert out.metrics.forward_passes == {"target": draft_scales, "refiner": K - draft_scales}
    drafted = sum(s * s for s in SCALES[:draft_scales])
    assert [ids[:drafted] for ids in out.ids] == [ids[:drafted] for ids in reference.ids]  # the drafter's scales
    assert all(len(ids) == 30 for ids in out.ids)


def refiner_logits_match_full_forward(large, dec, draft_scales):
    """Decode, then the refiner's full teacher-forced forward over the decoded sequence (no guidance)."""
    result = run(large.model, PROMPTS, dec, max_new_tokens=30, seed=0)
    tokenizer = large.model.tokenizer
    ids = tokenizer.split_scales(torch.tensor(result.ids))
    labels = torch.tensor([p[-1] for p in PROMPTS])
    with torch.no_grad():
        full = dec.refiner.objective.logits(dec.refiner, ids, labels)
    return full, result


def test_refiner_reads_the_drafted_scales_in_one_pass(large):
    """Cached == recomputed: the refiner's logits of every scale it generates equal its full
    block-causal forward over the final sequence (guidance off). Broken variant: a refiner that
    reads only the class token at the switch (not the drafted scales) gives other logits."""
    import genloom.plugins.code_var.decoder as module

    draft_scales = 2
    dec = code(large, draft_scales, cfg_scale=0.0)
    captured = {}
    original = module.CollaborativeDecoder._pass

    def capture(self, session, model, state, h, name):
        original(self, session, model, state, h, name)
        captured["scale_logits"] = session.scratch["scale_logits"]

    module.CollaborativeDecoder._pass = capture
    try:
        full, _ = refiner_logits_match_full_forward(large, dec, draft_scales)
        got = torch.cat(captured["scale_logits"][draft_scales:], 1)
        start = sum(s * s for s in SCALES[:draft_scales])
        assert torch.allclose(got, full[:, start:], atol=1e-5)

        def broken_embed(labels, features, start=0, _embed=dec.refiner.head.embed_sequence):
            if start == 0 and features is not None:  # drop the drafted scales' context, keep the last scale's inputs
                keep = SCALES[draft_scales] ** 2
                return _embed(labels, features[:, -keep:], start=0)
            return _embed(labels, features, start=start)

        dec.refiner.head.embed_sequence = broken_embed
        try:
            full_b, _ = refiner_logits_match_full_forward(large, dec, draft_scales)
            got_b = torch.cat(captured["scale_logits"][draft_scales:], 1)
            assert got_b.shape != full_b[:, start:].shape or not torch.allclose(got_b, full_b[:, start:], atol=1e-5)
        finally:
            del dec.refiner.head.embed_sequence
    finally:
        module.CollaborativeDecoder._pass = original


def test_refiner_must_share_the_tokenizer_and_config_errors(large):
    from genloom.core.errors import ConfigError, GenerationError

    dec = code(large, 2, share=False)
    with torch.no_grad():
        dec.refiner.tokenizer.codebook.weight.add_(1.0)
    with pytest.raises(GenerationError, match="codebook"):
        run(large.model, PROMPTS, dec, max_new_tokens=30)
    with pytest.raises(ConfigError, match="draft_scales"):
        large.ctx.build("decoder", {"name": "code-var", "draft_scales": 0})
    with pytest.raises(ConfigError, match="refiner"):
        large.ctx.build("decoder", {"name": "code-var", "refiner": [1, 2]})
    with pytest.raises(GenerationError, match="class label"):
        run(large.model, [[11]], large.ctx.build("decoder", {"name": "code-var", "draft_scales": 9}), max_new_tokens=30)
