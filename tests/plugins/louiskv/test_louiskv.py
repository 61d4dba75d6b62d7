"""LouisKV: retrieval runs only at semantic boundaries (query similarity to the last retrieval below
the threshold), so retrievals < decode steps; between them the retrieved set is reused; with a
budget covering every entry the output equals full attention exactly. Broken variants: a threshold
that triggers at every step (retrievals = steps), and a policy that reads a subset although the
budget covers everything (the exactness check fails)."""

import pytest
import torch

from genloom.core.cache_policy import ManagedKVCache
from genloom.core.generation import run
from genloom.plugins.louiskv.policy import LouisKV, kmeans
from genloom.testing import tiny_model

LM = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
      "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2}, "objective": {"name": "next-token"}}
PROMPTS = [list(range(10, 90)), list(range(100, 160))]


@pytest.fixture(scope="module")
def lm():
    built = tiny_model(base=LM, seed=0)
    built.model.eval().double()
    return built


def decode(built, policy, steps=24):
    model = built.model
    model.backbone.cache_policy = policy
    seen = []
    try:
        out = run(model, PROMPTS, built.ctx.build("decoder", {"name": "greedy"}), max_new_tokens=steps,
                  processors=[lambda logits, hist: (seen.append(logits.clone()), logits)[1]])
    finally:
        model.backbone.cache_policy = None
    return out.ids, seen


def retrievals(built, policy, steps=24):
    model = built.model
    state = ManagedKVCache(2, 1, 2, 8, dtype=torch.float64, policy=policy)
    with torch.inference_mode():
        logits = model(torch.tensor([PROMPTS[0]]), state=state)
        for _ in range(steps):
            logits = model(logits[:, -1:].argmax(-1), state=state)
    return state.stats.get("retrievals", 0), state


def test_budget_covering_everything_is_full_attention(lm):
    ids, logits = decode(lm, None)
    for policy in (LouisKV(budget=None), LouisKV(budget=10_000, local_window=4, threshold=0.99)):
        got_ids, got = decode(lm, policy)
        assert got_ids == ids and all(torch.allclose(a, b, atol=1e-12) for a, b in zip(got, logits))
    # broken variant: a budget smaller than the cache reads a subset and the output moves
    small_ids, small = decode(lm, LouisKV(budget=24, local_window=8, cluster_size=8, segment=4))
    assert small_ids != ids or not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(small, logits))


def test_retrieval_only_at_semantic_boundaries(lm):
    steps = 24
    count, state = retrievals(lm, LouisKV(budget=32, local_window=8, threshold=0.6, cluster_size=8, segment=4), steps)
    assert 2 <= count < 2 * steps  # 2 layers: at least the first retrieval each, fewer than one per layer and step
    assert state.held(0).size == len(PROMPTS[0]) + steps  # nothing evicted: retrieval reads a subset
    # the broken variant that retrieves at every step
    always, _ = retrievals(lm, LouisKV(budget=32, local_window=8, threshold=1.0, cluster_size=8, segment=4), steps)
    assert always == 2 * steps


def test_a_step_reads_at_most_the_budget(lm):
    policy = LouisKV(budget=32, local_window=8, threshold=0.6, cluster_size=8, segment=4)
    state = ManagedKVCache(2, 1, 2, 8, dtype=torch.float64, policy=policy)
    model = lm.model
    read = []
    with torch.inference_mode():
        logits = model(torch.tensor([PROMPTS[0]]), state=state)
        attended = state._attended
        state._attended = lambda layer, held, q, rows: (lambda out: (read.append(int(out[3].sum())), out)[1])(attended(layer, held, q, rows))
        for _ in range(10):
            logits = model(logits[:, -1:].argmax(-1), state=state)
    assert max(read) <= 32 + 1 and min(read) > 8


def test_kmeans_groups_separated_points():
    x = torch.cat([torch.randn(1, 10, 4, generator=torch.Generator().manual_seed(0)) * 0.01, 5 + torch.randn(1, 10, 4, generator=torch.Generator().manual_seed(1)) * 0.01], 1).double()
    ids = kmeans(x, torch.ones(1, 20, dtype=torch.bool), 2, 4)
    assert len(set(ids[0, :10].tolist())) == 1 and len(set(ids[0, 10:].tolist())) == 1 and ids[0, 0] != ids[0, 10]


def test_config_builds_the_policy():
    built = tiny_model(base={**LM, "cache_policy": {"name": "louiskv", "budget": 64, "local_window": 16}}, seed=0)
    state = built.model.init_state(1, 8)
    assert isinstance(state.policy, LouisKV) and state.policy.budget == 64
