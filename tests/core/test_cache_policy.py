"""KV-cache policies (:mod:`genloom.core.cache_policy`): with an unlimited budget every policy's
managed cache gives the plain cache's logits through the whole cache contract and the same tokens
under greedy, sampling, beam and speculative decoding; a budget bounds the memory the cache reports
(read from the tensors it holds); a policy the static cache or a decoder cannot serve is refused
with a clear error; policies come from the config and from third-party plugins."""

import types

import pytest
import torch

from genloom.core import hookimpl, records
from genloom.core.cache_policy import CachePolicy, Entries, FullPolicy, ManagedKVCache
from genloom.core.errors import ConfigError
from genloom.core.generation import run
from genloom.core.plugins import registry_with
from genloom.core.state import KVCache
from genloom.plugins.baseline.cache_policies import HeavyHitterPolicy, SnapKVPolicy, WindowPolicy
from genloom.testing import tiny_model

from genloom.core.generation import pad_left

VOCAB = 7  # token ids the tests draw (the byte tokenizer has 257)
LM = {
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2},
    "objective": {"name": "next-token"},
}
PROMPTS = [[1, 2, 3, 4, 5, 6], [2], [5, 0, 1]]  # ragged: left padding


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



def with_policy(model, policy):
    """``model`` with ``policy`` on every cache its backbone makes (the object a config's cache_policy node builds)."""
    model.backbone.cache_policy = policy
    return model


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    built = tiny_model(base=LM)
    built.model.eval().double()
    return built


class EvictsAnyway(CachePolicy):
    """Broken on purpose: claims no budget but keeps only the most recent earlier entry at every advance."""

    name = "evicts-anyway"

    def evict(self, cache, layer, held, q):
        return held.valid & (held.valid.long().flip(1).cumsum(1).flip(1) == 1)


UNLIMITED = [FullPolicy(), WindowPolicy(budget=None), WindowPolicy(budget=10_000, sinks=2),
             HeavyHitterPolicy(budget=10_000, sinks=1), SnapKVPolicy(budget=10_000, window=2, kernel=3)]  # budgets covering everything


@pytest.mark.parametrize("policy", UNLIMITED, ids=repr)
def test_unlimited_policy_keeps_the_cache_contract(lm, policy):
    """Prefill with left padding, one-token steps, a multi-token advance, ragged rollback,
    snapshot/restore and a beam reorder: the managed cache's logits equal the plain cache's."""
    model = lm.model
    reference = drive(model, KVCache(2, 3, 2, 8, 4, dtype=torch.float64))
    assert same(drive(model, ManagedKVCache(2, 3, 2, 8, dtype=torch.float64, policy=policy)), reference)
    assert not same(drive(model, ManagedKVCache(2, 3, 2, 8, dtype=torch.float64, policy=EvictsAnyway())), reference)


def test_keep_under_a_policy_equals_the_plain_cache(lm):
    """``keep`` (a token tree's accepted path) then more steps: the same logits as the plain cache."""
    model = lm.model
    outs = []
    for state in (KVCache(2, 2, 2, 8, 4, dtype=torch.float64), ManagedKVCache(2, 2, 2, 8, dtype=torch.float64, policy=WindowPolicy(budget=64))):
        with torch.inference_mode():
            model(torch.tensor([[1, 2, 3], [4, 5, 6]]), state=state)
            model(torch.tensor([[1, 1, 2, 2], [3, 3, 4, 4]]), state=state)
            state.keep(torch.tensor([[True, False, True, True], [False, True, False, False]]))
            outs.append(torch.cat([model(torch.tensor([[3], [5]]), state=state), model(torch.tensor([[6], [0]]), state=state)], 1))
            assert state.lengths.tolist() == [8, 6]
    assert torch.allclose(outs[0], outs[1], atol=1e-12)


DECODERS = [
    {"name": "greedy"},
    {"name": "sampling"},
    {"name": "beam", "num_beams": 3},
    {"name": "speculative", "draft": {**LM, "backbone": {**LM["backbone"], "n_layers": 1}}, "gamma": 3},
]


@pytest.mark.parametrize("node", DECODERS, ids=lambda n: n["name"])
@pytest.mark.parametrize("policy", UNLIMITED[1:], ids=repr)
def test_unlimited_policy_decodes_like_the_plain_cache(lm, node, policy):
    model = lm.model
    dec = lm.ctx.build("decoder", node)
    if node["name"] == "speculative":
        dec.draft.double()
    with_policy(model, None)

    def decode(policy):
        seen = []

        def record(logits, history):  # a processor that records the logits every step sees
            seen.append(logits.clone())
            return logits

        try:
            out = run(with_policy(model, policy), PROMPTS, dec, max_new_tokens=12, seed=3, processors=[record])
        finally:
            with_policy(model, None)
        return out.ids, seen

    ids, logits = decode(None)
    out_ids, out_logits = decode(policy)
    assert out_ids == ids
    assert len(out_logits) == len(logits) and all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(out_logits, logits))
    broken_ids, broken_logits = decode(EvictsAnyway())  # the comparison can fail: a policy that drops entries changes the output
    assert broken_ids != ids or not all(a.shape == b.shape and torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(broken_logits, logits))


def test_window_budget_bounds_the_memory_the_cache_reports(lm):
    model = lm.model
    budget, sinks = 6, 2
    state = ManagedKVCache(2, 1, 2, 8, dtype=torch.float64, policy=WindowPolicy(budget=budget, sinks=sinks))
    full = ManagedKVCache(2, 1, 2, 8, dtype=torch.float64, policy=FullPolicy())
    per_token = 2 * 2 * 8 * 8  # keys and values, 2 heads of 8 float64 numbers, per layer
    with torch.inference_mode():
        for s in (state, full):
            model(torch.tensor([[1, 2, 3, 4, 5, 6, 0, 1, 2, 3]]), state=s)
        assert state.layer_nbytes() == [10 * per_token] * 2  # the prompt (the latest advance) always stays
        for t in range(8):
            for s in (state, full):
                model(torch.tensor([[t % VOCAB]]), state=s)
            assert state.layer_nbytes() == [budget * per_token] * 2
            assert all(state.held(i).size == budget for i in range(2))
    # the sinks (positions 0, 1) and the most recent tokens
    assert state.held(0).pos[0].tolist() == [0, 1, 14, 15, 16, 17]
    assert full.layer_nbytes() == [18 * per_token] * 2
    assert state.nbytes < full.nbytes
    assert state.stats["evicted"] == 2 * (18 - budget)


def test_budget_in_bytes_is_turned_into_tokens(lm):
    per_token_all_layers = 2 * 2 * 8 * 8 * 2
    state = ManagedKVCache(2, 1, 2, 8, dtype=torch.float64, policy=WindowPolicy(budget_bytes=5 * per_token_all_layers, sinks=1))
    with torch.inference_mode():
        for t in range(12):
            lm.model(torch.tensor([[t % VOCAB]]), state=state)
    assert [state.held(i).size for i in range(2)] == [5, 5]
    assert sum(state.layer_nbytes()) == 5 * per_token_all_layers


def test_plain_cache_reports_what_it_holds(lm):
    state = KVCache(2, 3, 2, 8, 16, dtype=torch.float64)
    assert state.layer_nbytes() == [2 * 3 * 2 * 16 * 8 * 8] * 2
    assert state.nbytes == sum(state.layer_nbytes()) + state.valid.nbytes + state.pos.nbytes + state._lengths.nbytes


class Retrieves(CachePolicy):
    """Keeps everything and lets each step read only the two most recent earlier tokens."""

    name = "recent-two"

    def retrieve(self, cache, layer, held, q):
        rank_from_end = held.valid.long().flip(1).cumsum(1).flip(1)
        return held.valid & (rank_from_end <= 2 + cache._last)


def test_retrieval_is_what_attention_reads(lm):
    """A retrieve-only policy equals attention restricted to the retrieved keys (a sliding-window
    pattern of 3 over the plain cache), while the cache keeps every entry."""
    model = lm.model
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 0, 1, 2]])
    from genloom.core.pattern import sliding_window

    state = ManagedKVCache(2, 1, 2, 8, dtype=torch.float64, policy=Retrieves())
    ref_state = KVCache(2, 1, 2, 8, 4, dtype=torch.float64)
    with torch.inference_mode():
        outs, refs = [], []
        for t in range(seq.shape[1]):
            outs.append(model(seq[:, t:t + 1], state=state))
            refs.append(model(seq[:, t:t + 1], state=ref_state, pattern=sliding_window(3)))
    assert torch.allclose(torch.cat(outs, 1), torch.cat(refs, 1), atol=1e-12)
    assert state.held(0).size == seq.shape[1] and state.stats["retrieved_steps"] > 0


def test_static_cache_refuses_an_evicting_policy(lm):
    model = lm.model
    try:
        with pytest.raises(ConfigError, match="cache policy 'window'.*cache=dynamic"):
            run(with_policy(model, WindowPolicy(budget=4)), PROMPTS, lm.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=3, cache="static")
        with_policy(model, FullPolicy())
        assert type(model.init_state(1, 4)) is KVCache  # the full policy is the plain cache, static included
        run(model, PROMPTS, lm.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=3, cache="static")
    finally:
        with_policy(model, None)


class NoRollback(WindowPolicy):
    name = "no-rollback"
    refuses = frozenset({"rollback"})


def test_a_policy_refuses_what_it_cannot_support(lm):
    model = lm.model
    dec = lm.ctx.build("decoder", DECODERS[3])
    dec.draft.double()
    try:
        with pytest.raises(ValueError, match="cache policy 'no-rollback' does not support rollback"):
            run(with_policy(model, NoRollback(budget=8)), PROMPTS, dec, max_new_tokens=6)
        run(model, PROMPTS, lm.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=6)  # no rollback needed: fine
    finally:
        with_policy(model, None)


# -- the config and plugins -----------------------------------------------------------------------

def test_policy_comes_from_the_config():
    built = tiny_model(base={**LM, "cache_policy": {"name": "window", "budget": 16, "sinks": 2}}, seed=0)
    state = built.model.init_state(2, 8)
    assert isinstance(state, ManagedKVCache) and state.policy.budget == 16 and state.policy.sinks == 2
    assert isinstance(built.model.init_state(1), ManagedKVCache)
    assert type(tiny_model(base=LM, seed=0).model.init_state(1, 4)) is KVCache
    with pytest.raises(ConfigError, match="cache_policy.sinks"):
        tiny_model(base={**LM, "cache_policy": {"name": "window", "sinks": -1}})
    with pytest.raises(ConfigError, match="unknown cache_policy 'windw'.*Did you mean 'window'"):
        tiny_model(base={**LM, "cache_policy": {"name": "windw"}})


# The worked example of docs/plugin-guide.md ("A KV-cache policy"): a third-party policy that keeps
# the tokens whose keys the current queries score highest.
import dataclasses  # noqa: E402

from genloom.core.constraints import PositiveInt  # noqa: E402


@dataclasses.dataclass
class TopScoresConfig:
    """Keep the ``budget`` earlier tokens whose keys the incoming queries score highest."""

    budget: PositiveInt = 64
    """Tokens each layer may hold per sequence."""


class TopScores(CachePolicy):
    name = "top-scores"

    def __init__(self, budget):
        self.budget = budget

    def evict(self, cache, layer, held, q):
        room = cache.room(layer)
        if room is None or q is None or held.size <= room:
            return None
        groups = q.shape[1] // held.k.shape[1]
        keys = held.k.repeat_interleave(groups, dim=1)                      # (B, Hq, S, Dh)
        scores = (q @ keys.transpose(-1, -2)).amax(dim=(1, 2))             # (B, S): best score of any query, any head
        scores = scores.masked_fill(~held.valid, float("-inf"))
        top = scores.topk(room, dim=1).indices
        return torch.zeros_like(held.valid).scatter(1, top, True) & held.valid


def build_top_scores(config, ctx):
    return TopScores(config.budget)


third_party = types.SimpleNamespace(
    genloom_components=hookimpl(lambda: [records.Component(kind="cache_policy", name="top-scores", factory=f"{__name__}:build_top_scores",
                                                           config=TopScoresConfig, summary="Keep the keys the queries score highest.")]),
)
third_party.__name__ = "top_scores_plugin"


def test_third_party_policy_from_a_plugin(lm):
    registry = registry_with(third_party)
    built = tiny_model(base={**LM, "cache_policy": {"name": "top-scores", "budget": 5}}, registry=registry, seed=0)
    model = built.model.eval().double()
    assert "top-scores" in registry.names("cache_policy")
    state = model.init_state(1)
    assert isinstance(state.policy, TopScores)
    out = run(model, [[1, 2, 3, 4, 5, 6, 1, 2]], built.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=10)
    assert len(out.ids[0]) == 10
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3, 4, 5, 6, 1, 2]]), state=state)
        for t in range(4):
            model(torch.tensor([[t]]), state=state)
    assert [state.held(i).size for i in range(2)] == [5, 5]
    # unlimited: the same tokens as the plain cache
    with_policy(model, TopScores(budget=None))
    same_tokens = run(model, PROMPTS, built.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=8)
    with_policy(model, None)
    assert same_tokens.ids == run(model, PROMPTS, built.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=8).ids


def test_entries_select_keeps_order_and_pads():
    k = torch.arange(2 * 1 * 4 * 1, dtype=torch.float64).view(2, 1, 4, 1)
    e = Entries(k, -k, torch.arange(4).expand(2, 4), torch.ones(2, 4, dtype=torch.bool), {"score": torch.arange(8.0).view(2, 4)})
    out = e.select(torch.tensor([[False, True, False, True], [True, False, False, False]]))
    assert out.k[:, 0, :, 0].tolist() == [[1.0, 3.0], [4.0, 5.0]]
    assert out.valid.tolist() == [[True, True], [True, False]]
    assert out.pos.tolist() == [[1, 3], [0, 0]]
    assert out.extra["score"].tolist() == [[1.0, 3.0], [4.0, 5.0]]


@pytest.mark.parametrize("storage, nbytes", [("bfloat16", 2), ("float8", 1)])
def test_storage_dtype_holds_narrower_entries_read_back_in_the_model_dtype(lm, storage, nbytes):
    """``storage``: the cache holds keys/values in the narrower dtype (its own byte count says so) and
    attention reads them back in the model's dtype, rounded once; the decoded logits stay close."""
    from genloom.plugins.baseline.cache_policies import STORAGE, build_window

    policy = build_window(lm.ctx.registry.get("cache_policy", "window").config(storage=storage))
    assert policy.storage_dtype is STORAGE[storage]
    cache = ManagedKVCache(1, 1, 2, 8, dtype=torch.float64, policy=policy)
    k, v = torch.randn(2, 1, 2, 5, 8, dtype=torch.float64)
    cache.begin(None, 5)
    out_k, out_v, _, _ = cache.update(0, k, v)
    assert out_k.dtype == torch.float64 and torch.equal(out_k, k.to(STORAGE[storage]).double()) and not torch.equal(out_k, k)
    assert cache.layer_nbytes() == [2 * 2 * 5 * 8 * nbytes]
    evicting = build_window(lm.ctx.registry.get("cache_policy", "window").config(budget=3, sinks=1, storage=storage))
    cache = ManagedKVCache(1, 2, 2, 8, dtype=torch.float64, policy=evicting)  # evictions and a reorder in that dtype
    for n in (4, 1, 1):
        cache.begin(None, n)
        cache.update(0, *torch.randn(2, 2, 2, n, 8, dtype=torch.float64))
    cache.reorder(torch.tensor([1, 1]))
    assert cache.held(0).k.dtype == STORAGE[storage] and cache.layer_nbytes() == [2 * 2 * 2 * 3 * 8 * nbytes]
    model = lm.model
    narrow, plain = ManagedKVCache(2, 3, 2, 8, dtype=torch.float64, policy=policy), KVCache(2, 3, 2, 8, 4, dtype=torch.float64)
    got, reference = drive(model, narrow), drive(model, plain)
    assert all(torch.allclose(a, b, atol=0.1) for a, b in zip(got, reference)) and not same(got, reference)
