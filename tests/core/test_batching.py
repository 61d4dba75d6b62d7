"""Continuous batching (:mod:`genloom.core.batching`): every request's output equals its solo output
(greedy token for token; sampling with the same seed, the same tokens) on a transformer (KV cache),
on Mamba (recurrent state, ``extend``) and on a backbone whose state cannot ``extend`` (the rebuild
path); requests arrive at different steps and join without restarting the others; evicting finished
requests keeps the batch equal to the live requests."""

import pytest
import torch

from genloom.core.batching import ContinuousBatcher, Request
from genloom.core.errors import GenerationError
from genloom.core.generation import run
from genloom.core.state import KVCache
from genloom.testing import tiny_model

VOCAB = 32
BASE = {
    "tokenizer": {"name": "ids", "vocab_size": VOCAB},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "objective": {"name": "next-token"},
}
BACKBONES = {
    "transformer": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2},
    "mamba": {"name": "mamba", "d_model": 16, "n_layers": 2, "d_state": 4},
}
EOS = 3
# staggered arrivals, mixed prompt and output lengths; request 2 arrives while 0 and 1 are mid-way
REQUESTS = [
    Request([1, 2, 4, 5], max_new_tokens=9, arrival=0, seed=11),
    Request([6], max_new_tokens=3, arrival=0, seed=12),
    Request([7, 8, 9, 10, 1, 2, 4], max_new_tokens=7, arrival=2, seed=13),
    Request([5, 5], max_new_tokens=12, arrival=3, seed=14),
    Request([9, 1, 0], max_new_tokens=0, arrival=4, seed=15),
    Request([2, 4], max_new_tokens=5, arrival=9, seed=16),
]


@pytest.fixture(scope="module", params=list(BACKBONES))
def built(request):
    b = tiny_model(base={**BASE, "backbone": BACKBONES[request.param]}, seed=0)
    b.model.double().eval()
    return b


def decoder(built, name):
    return built.ctx.build("decoder", {"name": name})


def solo(built, req, dec, processors=(), eos=EOS):
    return run(built.model, [req.prompt], dec, max_new_tokens=req.max_new_tokens, processors=processors, seed=req.seed, eos_id=eos).ids[0]


def processors(built):
    nodes = [{"name": "repetition-penalty", "penalty": 1.3}, {"name": "top-k", "k": 5}, {"name": "temperature", "temperature": 0.8}]
    return [built.ctx.build("processor", n) for n in nodes]


class Recorder:
    """A logits processor that keeps every next-token distribution it sees, keyed by the history.

    Tiny random models fall into short token cycles, so equal tokens alone say little; equal
    logits at every step of every request (same histories reached, same values) say it all."""

    def __init__(self):
        self.seen = {}

    def __call__(self, logits, history):
        for row, hist in zip(logits, history.tolist()):
            self.seen[tuple(t for t in hist if t >= 0)] = row.clone()
        return logits


def same_logits(a: Recorder, b: Recorder) -> bool:
    return a.seen.keys() == b.seen.keys() and all(torch.allclose(a.seen[k], b.seen[k], rtol=1e-10, atol=1e-10) for k in a.seen)


@pytest.mark.parametrize("rule", ["greedy", "sampling"])
def test_every_request_equals_its_solo_output(built, rule):
    dec = decoder(built, rule)
    procs = processors(built) if rule == "sampling" else []
    batched, alone = Recorder(), Recorder()
    engine = ContinuousBatcher(built.model, dec, processors=[batched, *procs], eos_id=EOS)
    out = engine.run(REQUESTS)
    assert [c.index for c in out] == list(range(len(REQUESTS)))
    for req, c in zip(REQUESTS, out):
        assert c.ids == solo(built, req, dec, [alone, *procs]), f"request {c.index} ({rule})"
        assert c.admitted == req.arrival  # no batch limit: admitted as it arrives
    assert len(batched.seen) > 30 and same_logits(batched, alone)
    assert out[4].ids == []  # max_new_tokens 0
    # the engine fused several requests into one step: it did less work than one at a time
    assert max(engine.batch_sizes) >= 2
    assert engine.metrics.fused_steps < sum(len(c.ids) for c in out)
    assert engine.metrics.rebuilds == 0  # both states extend in place


def test_sampling_depends_on_the_request_seed_only(built):
    """A request's sample does not change with the company it keeps (its own generator)."""
    dec = decoder(built, "sampling")
    alone = ContinuousBatcher(built.model, dec, eos_id=None).run([Request([1, 2], max_new_tokens=8, seed=5)])[0].ids
    crowd = [Request([4, 4, 4], max_new_tokens=6, seed=s) for s in range(4)] + [Request([1, 2], max_new_tokens=8, arrival=2, seed=5)]
    assert ContinuousBatcher(built.model, dec, eos_id=None).run(crowd)[-1].ids == alone
    other = ContinuousBatcher(built.model, dec, eos_id=None).run([Request([1, 2], max_new_tokens=8, seed=6)])[0].ids
    assert other != alone  # the seed matters (the check above could not pass by accident)


def test_eviction_keeps_the_batch_equal_to_the_live_requests(built):
    dec = decoder(built, "greedy")
    engine = ContinuousBatcher(built.model, dec, eos_id=None)
    lengths = [2, 6, 4, 1]
    for i, n in enumerate(lengths):
        engine.submit(Request([1 + i, 2], max_new_tokens=n, arrival=i))
    while not engine.done():
        engine.step()
        if engine.live:
            assert engine.state.lengths.shape[0] == len(engine.live)  # the state's rows are the live requests
            # each row has consumed exactly its own prompt + generated tokens
            want = [len(l.request.prompt) + len(l.session.generated[0]) for l in engine.live]
            assert engine.state.lengths.tolist() == want
    # arrivals at steps 0..3, one token per request per step; a request that finishes at step t is
    # not in step t's fused pass. Step 0: r0 | 1: r0 done, r1 | 2: r1 r2 | 3: r3 done at once, r1 r2
    # | 4: r1 r2 | 5: r2 done, r1 | 6: r1 done, no pass.
    assert engine.batch_sizes == [1, 1, 2, 2, 2, 1]
    assert engine.metrics.evictions == 4 and engine.state is None


def test_kv_cache_slots_are_reclaimed_after_eviction():
    b = tiny_model(base={**BASE, "backbone": BACKBONES["transformer"]}, seed=0)
    model = b.model.double().eval()
    engine = ContinuousBatcher(model, decoder(b, "greedy"), eos_id=None)
    engine.submit(Request(list(range(1, 11)) * 3, max_new_tokens=2))  # a long prompt, soon gone
    engine.submit(Request([1], max_new_tokens=10))
    engine.step()
    engine.step()
    engine.step()
    assert len(engine.live) == 1
    state = engine.state
    assert state.used == int(state.lengths[0])  # no column is left over from the evicted request


def test_batch_limit_queues_requests_and_keeps_outputs(built):
    dec = decoder(built, "greedy")
    engine = ContinuousBatcher(built.model, dec, eos_id=EOS, max_batch_size=2)
    out = engine.run(REQUESTS)
    assert max(engine.batch_sizes) <= 2
    assert any(c.admitted > c.arrival for c in out)  # someone waited for room
    for req, c in zip(REQUESTS, out):
        assert c.ids == solo(built, req, dec)


def test_a_state_without_extend_is_rebuilt_exactly(monkeypatch):
    """The fallback for backbones whose state cannot append rows: prefill every live history again."""
    b = tiny_model(base={**BASE, "backbone": BACKBONES["transformer"]}, seed=0)
    model = b.model.double().eval()
    dec = decoder(b, "greedy")

    def refuse(self, other):
        raise NotImplementedError

    monkeypatch.setattr(KVCache, "extend", refuse)
    batched, alone = Recorder(), Recorder()
    engine = ContinuousBatcher(model, dec, processors=[batched], eos_id=EOS)
    out = engine.run(REQUESTS)
    assert engine.metrics.rebuilds > 0
    for req, c in zip(REQUESTS, out):
        assert c.ids == solo(b, req, dec, [alone])
    assert same_logits(batched, alone)


def test_a_broken_merge_is_caught():
    """Broken variant: rows appended in the wrong order (each request continues another's cache).
    The solo-equality check must then fail, so it can catch a wrong merge."""
    b = tiny_model(base={**BASE, "backbone": BACKBONES["transformer"]}, seed=0)
    model = b.model.double().eval()
    dec = decoder(b, "greedy")

    class Swapped(ContinuousBatcher):
        def _merge(self, admitted):
            super()._merge(admitted)
            if len(self.live) > 1:
                index = torch.arange(len(self.live)).roll(1)
                self.state.reorder(index)

    batched, alone = Recorder(), Recorder()
    out = Swapped(model, dec, processors=[batched], eos_id=EOS).run(REQUESTS)
    for req in REQUESTS:
        solo(b, req, dec, [alone])
    assert len(out) == len(REQUESTS) and not same_logits(batched, alone)


def test_refuses_multi_token_decoders_and_bad_requests(built):
    with pytest.raises(GenerationError, match="one-token decoders.*Beam overrides"):
        ContinuousBatcher(built.model, decoder(built, "beam"))
    engine = ContinuousBatcher(built.model)
    with pytest.raises(GenerationError, match="field 'prompt'"):
        engine.submit(Request([]))
    with pytest.raises(GenerationError, match="field 'arrival' must be an integer >= 0"):
        engine.submit(Request([1], arrival=-1))
    with pytest.raises(GenerationError, match="field 'seed'"):
        engine.submit(Request([1], seed=1.5))
    with pytest.raises(GenerationError, match="max_batch_size"):
        ContinuousBatcher(built.model, max_batch_size=0)


@pytest.mark.parametrize("node,extends", [
    ({"name": "gateloop", "d_model": 16, "n_layers": 2, "n_heads": 2}, True),  # the toolkit's RecurrentState
    ({"name": "mega", "d_model": 16, "n_layers": 2, "ema_dim": 4, "qk_dim": 8, "value_dim": 12}, False),  # no extend: rebuilt
])
def test_other_backbones_equal_their_solo_logits(node, extends):
    b = tiny_model(base={**BASE, "backbone": node}, seed=0)
    model = b.model.double().eval()
    dec = decoder(b, "greedy")
    batched, alone = Recorder(), Recorder()
    engine = ContinuousBatcher(model, dec, processors=[batched], eos_id=EOS)
    out = engine.run(REQUESTS[:4])
    for req, c in zip(REQUESTS, out):
        assert c.ids == solo(b, req, dec, [alone])
    assert same_logits(batched, alone)
    assert (engine.metrics.rebuilds == 0) == extends
