"""Hybrid decoding: the fast decoder drafts the whole hypothesis, the full decoder verifies it in one
pass and corrects it from the first disagreement. Properties: the output equals the full decoder's
greedy output token for token (source-conditioned, batched with left padding, with processors);
the full decoder runs one verification pass per round and the rounds are the corrections plus at
most one (exactly one round when the fast decoder is right); every draft is a whole hypothesis.

Broken variant caught: keeping the fast decoder's token at the first disagreement (no correction)
no longer equals greedy decoding.
"""

import pytest
import torch

from genloom.core.generation import Generator, run
from genloom.plugins.hybrid_decoding import HybridDecodingConfig
from genloom.plugins.hybrid_decoding.decoder import HybridDecoder
from genloom.testing import check_decoder, tiny_model

S, T = 6, 10
CONFIG = {
    "data": {"name": "seq2seq", "source_length": S, "target_length": T, "max_length": 6, "train_size": 20, "eval_size": 5},
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
    "objective": {"name": "next-token"},
}
SOURCES = [[104, 101, 108, 108, 111], [119, 111], [97, 98, 99, 100, 101, 102]]


@pytest.fixture(scope="module")
def built():
    b = tiny_model(base=CONFIG, seed=0)
    b.model.double().eval()
    return b


def noisy_copy(model, scale, seed=1):
    """A fast decoder that mostly agrees with the full one: its weights plus Gaussian noise."""
    draft = tiny_model(base=CONFIG, seed=0).model.double().eval()
    draft.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return draft


def hybrid(built, draft):
    cfg = HybridDecodingConfig(draft="unused")
    return HybridDecoder(cfg, built.ctx, draft=draft)


def test_conformance(built):
    draft = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
             "objective": {"name": "next-token"}}
    check_decoder(built, {"name": "hybrid-decoding", "draft": draft}, prompts=((1, 2, 3), (4, 5)), max_new_tokens=6)


@pytest.mark.parametrize("scale", [0.0, 0.05, 0.3])
def test_output_equals_greedy_of_the_full_decoder(built, scale):
    gen = Generator(built)
    greedy = gen.generate(source=SOURCES, decoder="greedy", max_new_tokens=T).ids
    dec = hybrid(built, noisy_copy(built.model, scale))
    result = gen.generate(source=SOURCES, decoder=dec, max_new_tokens=T)
    assert result.ids == greedy
    if scale == 0.0:  # a fast decoder that is always right: one verification pass, no correction
        assert result.metrics.extra == {"rounds": 1, "corrections": 0}


class Recorder:
    """An identity processor that keeps the logits it sees, keyed by the history."""

    def __init__(self):
        self.seen = {}

    def __call__(self, logits, history):
        for row, hist in zip(logits, history.tolist()):
            self.seen[tuple(t for t in hist if t >= 0)] = row.clone()
        return logits


def test_the_full_decoder_sees_what_greedy_sees(built):
    """Every next-token distribution greedy decoding computes, hybrid decoding computes identically:
    in particular the source block is consumed in one pass (read bidirectionally, as in greedy)."""
    gen = Generator(built)
    greedy, mine = Recorder(), Recorder()
    gen.generate(source=SOURCES, decoder=built.ctx.build("decoder", "greedy"), processors=[greedy], max_new_tokens=T)
    gen.generate(source=SOURCES, decoder=hybrid(built, noisy_copy(built.model, 0.3)), processors=[mine], max_new_tokens=T)
    assert greedy.seen and all(k in mine.seen and torch.allclose(mine.seen[k], v, rtol=1e-10, atol=1e-10) for k, v in greedy.seen.items())


def test_processors_and_eos_keep_greedy_parity(built):
    procs = [built.ctx.build("processor", {"name": "repetition-penalty", "penalty": 1.5}), built.ctx.build("processor", {"name": "no-repeat-ngram", "n": 2})]
    prompts = [[5, 6, 7, 8], [9], [10, 11]]
    for eos in (None, 32):
        want = run(built.model, prompts, built.ctx.build("decoder", "greedy"), max_new_tokens=12, processors=procs, eos_id=eos).ids
        got = run(built.model, prompts, hybrid(built, noisy_copy(built.model, 0.1)), max_new_tokens=12, processors=procs, eos_id=eos).ids
        assert got == want


def test_passes_are_one_per_round_and_rounds_follow_corrections(built):
    gen = Generator(built)
    for i, source in enumerate(SOURCES):
        for scale in (0.05, 0.2, 1.0):
            result = gen.generate(source=[source], decoder=hybrid(built, noisy_copy(built.model, scale, seed=i)), max_new_tokens=T)
            extra, passes = result.metrics.extra, result.metrics.forward_passes
            assert passes["target"] == 1 + extra["rounds"]  # the prefill, then one pass per round
            assert extra["corrections"] <= extra["rounds"] <= extra["corrections"] + 1
            # each round drafted the whole remaining hypothesis: the first round T tokens
            assert result.metrics.position_proposed[0] == extra["rounds"] and len(result.metrics.position_proposed) == T


def test_a_fast_decoder_that_is_wrong_costs_more_rounds(built):
    gen = Generator(built)
    good = gen.generate(source=SOURCES[:1], decoder=hybrid(built, noisy_copy(built.model, 0.02)), max_new_tokens=T).metrics.extra
    bad = gen.generate(source=SOURCES[:1], decoder=hybrid(built, noisy_copy(built.model, 2.0)), max_new_tokens=T).metrics.extra
    assert good["rounds"] < bad["rounds"]


class NoCorrection(HybridDecoder):
    """Broken variant: at the first disagreement the fast decoder's token is kept."""

    def _choices(self, session, logits, drafts):
        choices = super()._choices(session, logits, drafts)
        K = drafts.shape[1]
        choices[:, :K] = drafts
        return choices


def test_broken_variant_is_caught(built):
    gen = Generator(built)
    greedy = gen.generate(source=SOURCES, decoder="greedy", max_new_tokens=T).ids
    cfg = HybridDecodingConfig(draft="unused")
    broken = NoCorrection(cfg, built.ctx, draft=noisy_copy(built.model, 1.0))
    assert gen.generate(source=SOURCES, decoder=broken, max_new_tokens=T).ids != greedy
