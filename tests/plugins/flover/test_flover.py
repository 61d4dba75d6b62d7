"""Flover: requests arriving at different steps share each fused decode step, every request's output
is identical to its solo output (greedy token for token; sampling with its seed), and finished
requests are evicted so the active batch equals the live requests.

Broken variants caught: an engine that admits new requests only once the batch has drained (what
static/dynamic batching does: no temporal fusion) fails the "no request waits" and step-count
checks; an engine whose requests share one generator fails the sampling check.
"""

import pytest
import torch

from genloom.core.batching import ContinuousBatcher
from genloom.core.generation import run
from genloom.testing import check_decoder, tiny_model

VOCAB = 24
EOS = 2
PROMPTS = [[1, 5, 6, 7], [9], [3, 4, 8, 10, 11, 12], [13, 14], [15, 16, 17]]
BACKBONES = {
    "transformer": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 2},
    "mamba": {"name": "mamba", "d_model": 16, "n_layers": 2, "d_state": 4},
}


@pytest.fixture(scope="module", params=list(BACKBONES))
def target(request):
    config = {"tokenizer": {"name": "ids", "vocab_size": VOCAB}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
              "backbone": BACKBONES[request.param], "objective": {"name": "next-token"}}
    built = tiny_model(base=config, seed=0)
    built.model.double().eval()
    return built


def flover(target, **fields):
    return target.ctx.build("decoder", {"name": "flover", **fields})


def live_counts(schedule):
    """Requests live in the fused pass of each step, from the schedule alone: a request is in the
    passes of steps admitted .. finished - 1 (it leaves in the step that chose its last token)."""
    last = max(s["finished"] for s in schedule)
    return {t: sum(s["admitted"] <= t < s["finished"] for s in schedule) for t in range(last + 1)}


def test_conformance(target):
    check_decoder(target, {"name": "flover", "arrival_interval": 1})
    check_decoder(target, {"name": "flover", "greedy": False, "max_batch_size": 2})


def test_staggered_requests_equal_solo_greedy_and_the_batch_is_the_live_requests(target):
    greedy = target.ctx.build("decoder", "greedy")
    dec = flover(target, arrival_interval=1)
    result = run(target.model, PROMPTS, dec, max_new_tokens=10, eos_id=EOS)
    for prompt, ids in zip(PROMPTS, result.ids):
        assert ids == run(target.model, [prompt], greedy, max_new_tokens=10, eos_id=EOS).ids[0]
    schedule = result.metrics.extra["schedule"]
    assert [s["arrival"] for s in schedule] == [0, 1, 2, 3, 4]
    assert all(s["admitted"] == s["arrival"] for s in schedule)  # temporal fusion: nobody waits
    engine = dec.engine
    counts = live_counts(schedule)
    assert engine.batch_sizes == [counts[t] for t in engine.fused_clocks]  # eviction: batch == live requests
    assert all(counts[t] == 0 for t in counts if t not in engine.fused_clocks)  # no pass without a live request
    assert max(engine.batch_sizes) >= 2  # requests that arrived at different steps shared fused steps
    # every token but each request's last comes from a fused pass: fused row-steps = tokens - requests
    tokens = sum(len(i) for i in result.ids)
    assert engine.metrics.row_steps == tokens - len(PROMPTS) + sum(len(i) == 0 for i in result.ids)
    assert engine.metrics.fused_steps < tokens  # fewer passes than one request at a time


def test_sampling_equals_solo_with_each_requests_seed(target):
    dec = flover(target, greedy=False, arrival_interval=1)
    result = run(target.model, PROMPTS, dec, max_new_tokens=8, eos_id=None, seed=123)
    sampling = target.ctx.build("decoder", "sampling")
    for prompt, ids, s in zip(PROMPTS, result.ids, result.metrics.extra["schedule"]):
        assert ids == run(target.model, [prompt], sampling, max_new_tokens=8, seed=s["seed"]).ids[0]
    again = run(target.model, PROMPTS, flover(target, greedy=False, arrival_interval=1), max_new_tokens=8, eos_id=None, seed=123)
    assert again.ids == result.ids


def test_batch_limit_queues_and_keeps_greedy(target):
    greedy = target.ctx.build("decoder", "greedy")
    dec = flover(target, max_batch_size=2)
    result = run(target.model, PROMPTS, dec, max_new_tokens=6, eos_id=None)
    assert max(dec.engine.batch_sizes) == 2
    assert any(s["admitted"] > s["arrival"] for s in result.metrics.extra["schedule"])
    for prompt, ids in zip(PROMPTS, result.ids):
        assert ids == run(target.model, [prompt], greedy, max_new_tokens=6).ids[0]


class DrainFirst(ContinuousBatcher):
    """Broken variant: new requests are admitted only when the batch is empty (no temporal fusion)."""

    def _admit(self):
        return [] if self.live else super()._admit()


class SharedGenerator(ContinuousBatcher):
    """Broken variant: every request draws from the first request's generator."""

    def _admit(self):
        finished = super()._admit()
        if self.live:
            for live in self.live[1:]:
                live.session.generator = self.live[0].session.generator
        return finished


def test_broken_variants_are_caught(target, monkeypatch):
    dec = flover(target, arrival_interval=2)
    dec.engine_class = DrainFirst
    result = run(target.model, PROMPTS, dec, max_new_tokens=10, eos_id=None)
    schedule = result.metrics.extra["schedule"]
    assert not all(s["admitted"] == s["arrival"] for s in schedule)
    fused = flover(target, arrival_interval=2)
    run(target.model, PROMPTS, fused, max_new_tokens=10, eos_id=None)
    assert dec.engine.metrics.fused_steps > fused.engine.metrics.fused_steps

    dec = flover(target, greedy=False, arrival_interval=1)
    dec.engine_class = SharedGenerator
    result = run(target.model, PROMPTS, dec, max_new_tokens=8, eos_id=None, seed=123)
    sampling = target.ctx.build("decoder", "sampling")
    solo = [run(target.model, [p], sampling, max_new_tokens=8, seed=s["seed"]).ids[0] for p, s in zip(PROMPTS, result.metrics.extra["schedule"])]
    assert result.ids != solo


def test_config_errors_name_the_field(target):
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="arrival_interval"):
        target.ctx.build("decoder", {"name": "flover", "arrival_interval": -1}, path="decoder")
    with pytest.raises(ConfigError, match="max_batch_size"):
        target.ctx.build("decoder", {"name": "flover", "max_batch_size": 0}, path="decoder")
