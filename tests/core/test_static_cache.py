"""The static-cache decode path: :class:`StaticKVCache` keeps the :class:`KVCache` contract (the same
logits through prefill with left padding, one-token steps, multi-token advances, ragged rollback,
snapshot/restore, beam reorder and compaction), and generation through it -- eager, and compiled
without recompiling per step -- equals the dynamic path token for token."""

import pytest
import torch
import torch._dynamo

from genloom.core import static_decode
from genloom.core.errors import ConfigError
from genloom.core.generation import Generator, pad_left, run
from genloom.core.state import KVCache, StaticKVCache
from genloom.testing import tiny_model

TINY = {
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2},
    "objective": {"name": "next-token"},
}
PROMPTS = [[5, 6, 7, 8, 9, 10], [40], [1, 2, 3]]  # ragged: the batch is left-padded


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    b = tiny_model(base=TINY)
    b.model.eval()
    return b


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(1)
    return tiny_model(base=TINY).model.eval().double()


def dec(b, node):
    return b.ctx.build("decoder", node)


# -- the cache contract -----------------------------------------------------------------------

def drive(model, state, forward=None):
    """Run one scripted decoding session through ``state``; return the logits of every pass."""
    forward = forward or (lambda ids, **kw: model(ids, **kw))
    gen = torch.Generator().manual_seed(0)
    tokens = lambda n: torch.randint(0, 200, (3, n), generator=gen)  # noqa: E731
    ids, valid = pad_left([[5, 6, 7, 8], [9], [10, 11]])
    outs = []
    with torch.inference_mode():
        outs.append(forward(ids, state=state, valid=valid)[:, -1])  # prefill, left padding
        for _ in range(3):
            outs.append(forward(tokens(1), state=state))  # one-token steps
        outs.append(forward(tokens(3), state=state))  # a multi-token advance (draft verification)
        state.rollback(state.lengths - torch.tensor([1, 3, 0]))  # ragged rollback of rejected drafts
        for _ in range(2):
            outs.append(forward(tokens(1), state=state))
        snap = state.snapshot()
        outs.append(forward(tokens(1), state=state))
        state.restore(snap)  # back to before that step
        outs.append(forward(tokens(1), state=state))
        state.reorder(torch.tensor([2, 0, 0]))  # beam search: rows copy other rows
        for _ in range(2):
            outs.append(forward(tokens(1), state=state))
        outs.append(state.lengths.clone().double())
    return outs


def same(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, atol=1e-9, rtol=1e-9) for x, y in zip(a, b))


def static_like(model, batch, capacity, cls=StaticKVCache):
    template = model.init_state(batch, 1)
    k = template.k[0]
    return cls(template.n_layers, batch, k.shape[1], k.shape[3], capacity, dtype=k.dtype)


def test_static_cache_gives_the_dynamic_cache_logits(model64):
    dynamic = drive(model64, model64.init_state(3, 4))  # the dynamic cache grows from 4 slots
    assert type(model64.init_state(3)) is KVCache
    assert same(drive(model64, static_like(model64, 3, 64)), dynamic)


def test_static_cache_compacts_when_full_and_raises_when_it_cannot(model64):
    dynamic = drive(model64, model64.init_state(3, 4))
    # 17 slots: the rollback and restore leave holes that only a compaction reclaims
    assert same(drive(model64, static_like(model64, 3, 17)), dynamic)
    with pytest.raises(ValueError, match="static KV cache holds 8 slots"):
        drive(model64, static_like(model64, 3, 8))


class ForgetsValidity(StaticKVCache):
    """Broken: attends over the whole store, unwritten and rolled-back slots included."""

    def update(self, layer, k, v):
        k_all, v_all, pos, valid = super().update(layer, k, v)
        return k_all, v_all, pos, torch.ones_like(valid)


class ReordersOnlyKeys(StaticKVCache):
    """Broken: a beam reorder that moves keys/values but not the validity, positions and lengths."""

    def reorder(self, index):
        for t in (*self.k, *self.v):
            t.copy_(t.index_select(0, index))


@pytest.mark.parametrize("broken", [ForgetsValidity, ReordersOnlyKeys])
def test_the_contract_check_catches_a_broken_static_cache(model64, broken):
    dynamic = drive(model64, model64.init_state(3, 4))
    assert not same(drive(model64, static_like(model64, 3, 64, broken)), dynamic)


def test_compiled_step_gives_the_same_logits_without_recompiling(model64):
    """The one-token steps run through torch.compile (aot_eager: the capture, not inductor's build)."""
    dynamic = drive(model64, model64.init_state(3, 4))
    sd = static_decode.StaticDecoding(model64, compile=True, backend="aot_eager")
    assert same(drive(model64, sd.init_state(3, 40), forward=sd), dynamic)
    assert sd.compiled_calls == 9  # every one-token step of the script
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second session reuses the graph
        assert same(drive(model64, sd.init_state(3, 40), forward=sd), dynamic)


# -- generation through the static path -------------------------------------------------------

def test_static_generation_equals_dynamic_greedy_sampling_beam(built):
    m = built.model
    for node, kw in (("greedy", {}), ("sampling", {"seed": 3}), ({"name": "beam", "num_beams": 3}, {})):
        a = run(m, PROMPTS, dec(built, node), max_new_tokens=12, **kw)
        b = run(m, PROMPTS, dec(built, node), max_new_tokens=12, cache="static", **kw)
        assert a.ids == b.ids, node


def test_static_generation_equals_dynamic_speculative_with_rollback():
    config = {"tokenizer": {"name": "ids", "vocab_size": 6}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
              "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 2}, "objective": {"name": "next-token"}}
    torch.manual_seed(0)
    target = tiny_model(base=config)
    prompts = [[1, 2, 3, 4], [5], [0, 2]]
    for greedy in (True, False):
        decoder = target.ctx.build("decoder", {"name": "speculative", "draft": config, "gamma": 3, "greedy": greedy})
        with torch.no_grad():  # the draft: the target's weights plus noise, so that some drafts are rejected
            gen = torch.Generator().manual_seed(1)
            for p_draft, p_target in zip(decoder.draft.parameters(), target.model.parameters()):
                p_draft.copy_(p_target + p_target.std() * torch.randn(p_target.shape, generator=gen))
        a = run(target.model, prompts, decoder, max_new_tokens=16, seed=5)
        b = run(target.model, prompts, decoder, max_new_tokens=16, seed=5, cache="static")
        assert a.ids == b.ids
        assert 0 < b.metrics.mean_acceptance_length < 3  # drafts were rejected: the target's cache rolled back


def test_compiled_generation_equals_dynamic_without_recompiling(built):
    m = built.model
    sd = static_decode.StaticDecoding(m, compile=True, backend="aot_eager")
    cases = (("greedy", {}), ("sampling", {"seed": 3}), ({"name": "beam", "num_beams": 2}, {}))
    for node, kw in cases:  # first pass: one graph per batch shape
        assert run(sd, PROMPTS, dec(built, node), max_new_tokens=10, **kw).ids == run(m, PROMPTS, dec(built, node), max_new_tokens=10, **kw).ids
    assert sd.compiled_calls > 0
    other = [[7, 7], [1, 2, 3, 4, 5, 6, 7, 8], [90]]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for node, kw in cases:  # other prompts, same shapes: the compiled graphs are reused
            assert run(sd, other, dec(built, node), max_new_tokens=10, **kw).ids == run(m, other, dec(built, node), max_new_tokens=10, **kw).ids
    # the caches above were made under inference mode; a cache asked for outside it is a fresh one
    assert not sd.init_state(3, 40).valid.is_inference()


@pytest.mark.slow
def test_inductor_compiled_generation_equals_dynamic(built):
    """The real thing on CPU: inductor's default mode (a minute or more on a cold compile cache)."""
    m = built.model
    ref = run(m, PROMPTS, dec(built, "greedy"), max_new_tokens=12)
    out = run(m, PROMPTS, dec(built, "greedy"), max_new_tokens=12, cache="static", compile=True)
    assert out.ids == ref.ids
    with torch._dynamo.config.patch(error_on_recompile=True):
        a = run(m, PROMPTS, dec(built, "sampling"), max_new_tokens=12, seed=4)
        b = run(m, PROMPTS, dec(built, "sampling"), max_new_tokens=12, seed=4, cache="static", compile=True)
        assert a.ids == b.ids
    assert static_decode.prepare(m, compile=True).compiled_calls > 0


def test_generator_keywords_and_config_defaults(built):
    gen = Generator(built)
    a = gen.generate(PROMPTS, max_new_tokens=8, decoder="greedy")
    b = gen.generate(PROMPTS, max_new_tokens=8, decoder="greedy", cache="static")
    assert a.ids == b.ids
    with pytest.raises(ConfigError, match="compile=true needs cache=static"):
        gen.generate(PROMPTS, max_new_tokens=2, decoder="greedy", compile=True)
    with pytest.raises(ConfigError, match="cache must be one of dynamic, static"):
        gen.generate(PROMPTS, max_new_tokens=2, decoder="greedy", cache="paged")


def test_backbone_without_static_cache_gets_a_clear_error():
    mamba = tiny_model(base={**TINY, "backbone": {"name": "mamba", "d_model": 16, "n_layers": 1, "d_state": 4}}).model
    with pytest.raises(ConfigError, match="does not support a static cache.*use cache=dynamic"):
        run(mamba, [[1, 2]], mamba.ctx.build("decoder", "greedy"), max_new_tokens=2, cache="static")


def test_cli_options_cache_and_compile_are_typed():
    from genloom.core import generate_cli
    from genloom.core.errors import GenerationError

    opts, _ = generate_cli.parse(["cache=static", "compile=true"])
    assert opts.cache == "static" and opts.compile is True
    with pytest.raises(GenerationError, match="option 'cache'"):
        generate_cli.parse(["cache=paged"])
