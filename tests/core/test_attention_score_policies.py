"""The attention-score eviction policies of the baseline plugin (``heavy-hitter``, ``snapkv``): their
per-entry scores equal the attention probabilities recomputed by hand, they travel with their entries
through eviction and beam reorders, and the entries kept are the ones the scores pick. (With a budget
covering everything they give the full cache's output: tests/core/test_cache_policy.py.)"""

import math

import pytest
import torch

from genloom.core.cache_policy import ManagedKVCache
from genloom.plugins.baseline.cache_policies import HeavyHitterPolicy, SnapKVPolicy

B, HQ, DH = 2, 2, 4  # two rows, two query heads sharing one key/value head (grouped-query attention)


def stream(seed=0, steps=8, prompt=4):
    """Random (k, v, q) chunks: a prompt, then one-token steps."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [prompt] + [1] * steps
    return [tuple(torch.randn(B, h, n, DH, generator=gen, dtype=torch.float64) for h in (1, 1, HQ)) for n in sizes]


def probabilities(q, keys):
    """Softmax over ``keys`` (S, DH) of every head's query q (HQ, DH): (HQ, S), written out."""
    logits = [[float(q[h] @ k) / math.sqrt(DH) for k in keys] for h in range(HQ)]
    out = []
    for row in logits:
        top = max(row)
        e = [math.exp(x - top) for x in row]
        out.append([x / sum(e) for x in e])
    return torch.tensor(out, dtype=torch.float64)


def heavy_hitter_by_hand(chunks, budget, recent, reorder_at=None, index=None):
    """H2O per row with plain lists: [(position, key, accumulated mass)] after every advance."""
    rows = [[] for _ in range(B)]
    length = 0
    for step, (k, _, q) in enumerate(chunks):
        if step == reorder_at:
            rows = [list(rows[i]) for i in index.tolist()]
        n = k.shape[2]
        for b in range(B):
            held = rows[b]
            room = max(budget - n, 0)
            if len(held) > room:
                others = held[:len(held) - recent]
                best = sorted(others, key=lambda e: -e[2])[:room - recent]
                held = [e for e in held if e in best or e in held[len(held) - recent:]]
            held = [list(e) for e in held] + [[length + t, k[b, 0, t], 0.0] for t in range(n)]
            for t in range(n):  # query t sees the held keys up to its own position
                seen = [e for e in held if e[0] <= length + t]
                p = probabilities(q[b, :, t], [e[1] for e in seen]).sum(0)
                for e, mass in zip(seen, p.tolist()):
                    e[2] += mass
            rows[b] = [tuple(e) for e in held]
        length += n
    return rows


def run_cache(policy, chunks, reorder_at=None, index=None):
    cache = ManagedKVCache(1, B, 1, DH, dtype=torch.float64, policy=policy)
    for step, (k, v, q) in enumerate(chunks):
        if step == reorder_at:
            cache.reorder(index)
        cache.begin(None, k.shape[2])
        cache.update(0, k, v, q=q)
    return cache


def matches(policy, cache, expected) -> bool:
    held = cache.held(0)
    scores = policy.scores(cache, 0, held)
    for b in range(B):
        pos = held.pos[b][held.valid[b]].tolist()
        if pos != [e[0] for e in expected[b]]:
            return False
        got = scores[b][held.valid[b]]
        if not torch.allclose(got, torch.tensor([e[2] for e in expected[b]], dtype=got.dtype), atol=1e-12):
            return False
    return True


class ScoresOnThePolicy(HeavyHitterPolicy):
    """Broken on purpose: keeps the scores in the policy by slot, so they stay behind when entries are
    evicted (the survivors move to the front) or rows are reordered."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.kept = {}

    def scores(self, cache, layer, held):
        s = self.kept.get(layer)
        if s is None:
            return None
        s = s[:, :held.size]
        return torch.cat([s, s.new_zeros(s.shape[0], held.size - s.shape[1])], 1)

    def store(self, cache, layer, held, scores):
        self.kept[layer] = scores


def test_accumulated_attention_mass_equals_the_sum_of_probabilities():
    """No eviction (a budget covering everything): every entry's score is the attention probability
    each later query (both heads) gave it, summed, recomputed by hand."""
    chunks = stream()
    policy = HeavyHitterPolicy(budget=100)
    cache = run_cache(policy, chunks)
    assert matches(policy, cache, heavy_hitter_by_hand(chunks, budget=100, recent=50))
    total = sum(c[0].shape[2] for c in chunks)
    assert torch.allclose(cache.held(0).extra["attention_mass"].sum(1), torch.full((B,), float(total * HQ), dtype=torch.float64))


@pytest.mark.parametrize("reorder", [False, True], ids=["evictions", "evictions+reorder"])
def test_heavy_hitters_move_with_their_entries(reorder):
    """Budget 4 (2 recent + 2 heavy hitters): the entries kept and their scores equal the hand-run H2O
    (whose softmax is over the entries held at the time), through evictions and a beam reorder; the
    policy that keeps its scores by slot instead of on the entries fails the same check."""
    chunks = stream(seed=1, steps=10)
    at, index = (6, torch.tensor([1, 1])) if reorder else (None, None)
    expected = heavy_hitter_by_hand(chunks, budget=4, recent=2, reorder_at=at, index=index)
    policy = HeavyHitterPolicy(budget=4, recent_fraction=2 / 3)  # room 3 during steps: 2 recent + 1 heavy hitter
    expected = heavy_hitter_by_hand(chunks, budget=4, recent=2, reorder_at=at, index=index)
    cache = run_cache(policy, chunks, at, index)
    assert cache.stats["evicted"] > 0 and matches(policy, cache, expected)
    broken = ScoresOnThePolicy(budget=4, recent_fraction=2 / 3)
    assert not matches(broken, run_cache(broken, chunks, at, index), expected)


def test_heavy_hitters_and_sinks_within_the_budget():
    chunks = stream(seed=2, steps=12, prompt=6)
    cache = run_cache(HeavyHitterPolicy(budget=5, recent_fraction=0.5, sinks=1), chunks)
    held = cache.held(0)
    assert held.size == 5 and bool(held.valid.all())
    assert held.pos[:, 0].tolist() == [0, 0]  # the sink
    assert held.pos[:, -2:].tolist() == [[16, 17], [16, 17]]  # the most recent (2 of the room of 4) and the chunk


def votes_by_hand(window, keys, kernel, pooling):
    """SnapKV's votes over ``keys`` (S, DH) at positions 0..S-1: each head's attention of the window
    queries [(position, q)] summed (each query sees the keys up to its position), pooled over
    ``kernel`` neighbours, summed over heads."""
    S, half = len(keys), kernel // 2
    per_head = torch.zeros(HQ, S, dtype=torch.float64)
    for pos, q in window:
        per_head[:, :pos + 1] += probabilities(q, keys[:pos + 1])
    pooled = torch.zeros_like(per_head)
    for h in range(HQ):
        for j in range(S):
            around = per_head[h, max(0, j - half):j + half + 1]
            pooled[h, j] = around.max() if pooling == "max" else around.mean()
    return pooled.sum(0)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_snapkv_votes_are_the_pooled_window_attention(pooling):
    """After a prompt of 6 and two steps, the votes are those of the last 3 queries (the prompt's last
    and the two steps'), causal, pooled over 3 neighbours, recomputed by hand; at the next step
    (budget 5) the layer keeps the best-voted earlier entry, the window of 3 and the step."""
    chunks = stream(seed=3, steps=3, prompt=6)
    cache = run_cache(SnapKVPolicy(budget=100, window=3, kernel=3, pooling=pooling), chunks[:3])
    held = cache.held(0)
    votes = held.extra["votes"]
    for b in range(B):
        window = [(5, chunks[0][2][b, :, 5]), (6, chunks[1][2][b, :, 0]), (7, chunks[2][2][b, :, 0])]
        assert torch.allclose(votes[b], votes_by_hand(window, held.k[b, 0], 3, pooling), atol=1e-12)
        wrong = votes_by_hand(window[1:], held.k[b, 0], 3, pooling)  # a window one query short
        assert not torch.allclose(votes[b], wrong, atol=1e-6)
    cache.policy = SnapKVPolicy(budget=5, window=3, kernel=3, pooling=pooling)
    cache.begin(None, 1)
    k, v, q = chunks[3]
    cache.update(0, k, v, q=q)
    for b in range(B):
        best = int(votes[b, :5].argmax())  # the best-voted entry outside the window (positions 5-7)
        assert cache.held(0).pos[b].tolist() == [best, 5, 6, 7, 8]


def test_snapkv_forgets_the_queries_of_rolled_back_tokens():
    """A window of 3 over positions 6-8, then a rollback of positions 7-8 and a new token at 7: the
    votes are those of the queries at 6 and the new 7 only (the rolled-back ones drop out; the window
    refills as decoding goes on)."""
    chunks = stream(seed=4, steps=5, prompt=5)
    cache = run_cache(SnapKVPolicy(budget=100, window=3, kernel=1), chunks[:5])  # positions 0..8
    cache.rollback(7)
    cache.begin(None, 1)
    k, v, q = chunks[5]
    cache.update(0, k, v, q=q)  # position 7 again, another token
    held = cache.held(0)
    for b in range(B):
        keys = held.k[b, 0][held.valid[b]]
        window = [(6, chunks[2][2][b, :, 0]), (7, q[b, :, 0])]
        assert torch.allclose(held.extra["votes"][b][held.valid[b]], votes_by_hand(window, keys, 1, "max"), atol=1e-12)
        stale = [(6, chunks[2][2][b, :, 0]), (7, chunks[3][2][b, :, 0]), (7, q[b, :, 0])]
        assert not torch.allclose(held.extra["votes"][b][held.valid[b]], votes_by_hand(stale, keys, 1, "max"), atol=1e-6)


def test_policies_come_from_the_config():
    """The config nodes build the policies with their fields; a bad value names its field."""
    from genloom.core.errors import ConfigError
    from genloom.testing import tiny_model

    base = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "objective": {"name": "next-token"},
            "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}}
    node = {"name": "heavy-hitter", "budget": 8, "sinks": 2, "decay": 0.5, "storage": "bfloat16"}
    state = tiny_model(base={**base, "cache_policy": node}, seed=0).model.init_state(1, 4)
    assert isinstance(state, ManagedKVCache) and isinstance(state.policy, HeavyHitterPolicy)
    assert (state.policy.budget, state.policy.sinks, state.policy.decay, state.policy.storage_dtype) == (8, 2, 0.5, torch.bfloat16)
    state = tiny_model(base={**base, "cache_policy": {"name": "snapkv", "budget": 8, "window": 4, "pooling": "avg"}}, seed=0).model.init_state(1, 4)
    assert isinstance(state.policy, SnapKVPolicy) and (state.policy.window, state.policy.pooling) == (4, "avg")
    with pytest.raises(ConfigError, match="cache_policy.pooling"):
        tiny_model(base={**base, "cache_policy": {"name": "snapkv", "pooling": "mean"}})
    with pytest.raises(ConfigError, match="cache_policy.recent_fraction"):
        tiny_model(base={**base, "cache_policy": {"name": "heavy-hitter", "recent_fraction": 1.5}})


@pytest.mark.parametrize("node", [{"name": "heavy-hitter", "budget": 6, "sinks": 1}, {"name": "snapkv", "budget": 6, "window": 2, "kernel": 3}],
                         ids=lambda n: n["name"])
def test_a_budget_holds_under_every_decoder(node):
    """Under a budget smaller than the text, beam search (reorders) and speculative decoding
    (multi-token advances, rollbacks) run through the policy and no layer holds more than the budget
    plus the latest advance."""
    from genloom.core.generation import run
    from genloom.testing import tiny_model

    lm = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm", "init_std": 0.5}, "objective": {"name": "next-token"},
          "backbone": {"name": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2}}
    built = tiny_model(base={**lm, "cache_policy": node}, seed=0)
    model = built.model.eval()
    seen = []
    policy = model.backbone.cache_policy
    original = policy.evict

    def evict(cache, layer, held, q):  # record what each layer holds after every advance
        seen.append(max(cache.held(i).size for i in cache.owners()))
        return original(cache, layer, held, q)

    policy.evict = evict
    draft = {**lm, "backbone": {**lm["backbone"], "n_layers": 1}}
    for dec in ({"name": "beam", "num_beams": 2}, {"name": "speculative", "draft": draft, "gamma": 3}):
        out = run(model, [[1, 2, 3, 4, 5, 6, 7, 8, 9], [4, 5]], built.ctx.build("decoder", dec), max_new_tokens=10)
        assert all(len(ids) == 10 for ids in out.ids)
    assert seen and max(seen) <= 6 + 9  # the budget, plus at most the prompt (the latest advance always stays)
