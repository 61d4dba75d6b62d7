"""Token trees in the core: the tree attention pattern, its backends, and ``KVCache.keep``."""

import math

import pytest
import torch

from genloom.core import kernels
from genloom.core.pattern import CAUSAL, TreePattern, tree, tree_ancestors
from genloom.core.state import KVCache, StaticKVCache
from genloom.testing import tiny_model

VOCAB = 6
PARENTS = [-1, 0, 0, 1, 1, 2, 5]  # node 0 is the root; two branches, depths 0..3
CONFIG = {
    "tokenizer": {"name": "ids", "vocab_size": VOCAB},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 2},
    "objective": {"name": "next-token"},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model(base=CONFIG).model.double().eval()


def test_tree_tables_and_bad_parents():
    anc, depth = tree_ancestors(PARENTS)
    assert depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert anc[6].nonzero().flatten().tolist() == [0, 2, 5, 6]
    assert not anc[3, 2]  # a sibling branch is not an ancestor
    with pytest.raises(ValueError, match="node 1 has parent 1"):
        tree([-1, 1], 0)
    pat = tree(PARENTS, [4, 2])
    # prefix queries are causal, nodes see the prefix and their ancestors; positions follow depth
    q = torch.tensor([[[1]], [[5]]])
    k = torch.arange(12)[None, None]
    rows = torch.arange(2)[:, None, None]
    got = pat.allowed(q, k, row=rows)
    assert got[0, 0].nonzero().flatten().tolist() == [0, 1]
    assert got[1, 0].nonzero().flatten().tolist() == [0, 1, 2, 3, 5]  # start 2: node 3 at 5, parent node 1 at 3, root at 2
    assert pat.positions(torch.arange(11).expand(2, 11))[0].tolist() == [0, 1, 2, 3, 4, 5, 5, 6, 6, 6, 7]


def _explicit_attention(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return scores.softmax(-1) @ v


def _tree_case(dtype):
    """Two rows with different prefix lengths (4 and 2) and a padded first key in row 1."""
    torch.manual_seed(0)
    B, H, N = 2, 2, len(PARENTS)
    Lk = 4 + N
    q = torch.randn(B, H, N, 8, dtype=dtype)
    k, v = (torch.randn(B, H, Lk, 8, dtype=dtype) for _ in range(2))
    starts = torch.tensor([4, 2])
    kv_pos = torch.stack([torch.arange(Lk), torch.cat([torch.zeros(2, dtype=torch.long), torch.arange(Lk - 2)])])
    kv_valid = torch.tensor([[True] * Lk, [False, False] + [True] * (Lk - 2)])
    q_pos = starts[:, None] + torch.arange(N)
    anc, _ = tree_ancestors(PARENTS)
    allowed = torch.zeros(B, N, Lk, dtype=torch.bool)
    for b in range(B):
        first = Lk - N  # node slots are the last N columns
        allowed[b, :, :first] = kv_valid[b, :first]
        allowed[b, :, first:] = anc
    return q, k, v, dict(pattern=tree(PARENTS, starts), q_pos=q_pos, kv_pos=kv_pos, kv_valid=kv_valid), allowed


def test_reference_is_the_definition_of_tree_attention():
    q, k, v, kw, allowed = _tree_case(torch.float64)
    with kernels.use("attention", "reference") as ref:
        got = ref(q, k, v, **kw)
    expect = _explicit_attention(q, k, v, allowed)
    torch.testing.assert_close(got, expect, atol=1e-12, rtol=1e-12)
    # broken variant: plain causal attention over the same layout lets nodes see sibling branches
    with kernels.use("attention", "reference") as ref:
        causal = ref(q, k, v, pattern=CAUSAL, q_pos=kw["q_pos"], kv_pos=kw["kv_pos"], kv_valid=kw["kv_valid"])
    assert (causal - expect).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_backends_agree_with_the_reference_on_trees(backend):
    q, k, v, kw, _ = _tree_case(torch.float32)
    why = kernels.implementation("attention", backend).supports(device=q.device, dtype=q.dtype, pattern=kw["pattern"])
    if why:
        pytest.skip(why)
    with kernels.use("attention", "reference") as ref:
        expect = ref(q, k, v, **kw)
    with kernels.use("attention", backend) as fast:
        got = fast(q, k, v, **kw)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


def _paths(parents):
    anc, _ = tree_ancestors(parents)
    return [anc[i].nonzero().flatten() for i in range(len(parents))]


def test_tree_forward_equals_each_root_to_node_path(model):
    prompts = torch.tensor([[1, 2, 3, 4], [0, 0, 5, 1]])
    valid = torch.tensor([[True] * 4, [False, False, True, True]])
    nodes = torch.tensor([[3, 1, 2, 4, 0, 5, 1], [2, 2, 0, 1, 3, 4, 4]])
    state = model.init_state(2, 32)
    model(prompts, state=state, valid=valid)
    logits = model(nodes, state=state, pattern=tree(PARENTS, state.lengths))
    chain = model.init_state(2, 32)
    model(prompts, state=chain, valid=valid)
    wrong = model(nodes, state=chain)  # broken variant: the nodes read as one causal chain
    worst = worst_wrong = 0.0
    for b in range(2):
        prefix = prompts[b][valid[b]]
        for i, path in enumerate(_paths(PARENTS)):
            ref = model(torch.cat([prefix, nodes[b, path]])[None])[0, -1]
            worst = max(worst, (ref - logits[b, i]).abs().max().item())
            worst_wrong = max(worst_wrong, (ref - wrong[b, i]).abs().max().item())
    assert worst < 1e-10
    assert worst_wrong > 1e-3


@pytest.mark.parametrize("cache_type", [KVCache, StaticKVCache])
def test_keep_equals_recompute_and_memory_stays_bounded(model, cache_type):
    torch.manual_seed(1)
    prompts = torch.tensor([[1, 2, 3, 4], [0, 0, 5, 1]])
    valid = torch.tensor([[True] * 4, [False, False, True, True]])
    base = model.init_state(2, 64)
    state = cache_type.like(base) if cache_type is StaticKVCache else base
    model(prompts, state=state, valid=valid)
    seqs = [prompts[b][valid[b]].tolist() for b in range(2)]
    paths = _paths(PARENTS)
    for round_ in range(12):
        nodes = torch.randint(0, VOCAB, (2, len(PARENTS)))
        model(nodes, state=state, pattern=tree(PARENTS, state.lengths))
        leaves = [6, 3] if round_ % 2 else [0, 5]  # rows keep paths of different lengths
        keep = torch.zeros(2, len(PARENTS), dtype=torch.bool)
        for b, leaf in enumerate(leaves):
            keep[b, paths[leaf]] = True
            seqs[b] += nodes[b, paths[leaf]].tolist()
        state.keep(keep)
        assert state.lengths.tolist() == [len(s) for s in seqs]
        # memory grows only by the longest kept path per round, never by the rejected nodes
        assert state.used <= 4 + sum(4 if r % 2 else 3 for r in range(round_ + 1))
    nxt = torch.tensor([[2], [3]])
    got = model(nxt, state=state)[:, -1]
    for b in range(2):
        ref = model(torch.tensor([seqs[b] + [nxt[b, 0].item()]]))[0, -1]
        torch.testing.assert_close(got[b], ref, atol=1e-6, rtol=1e-6)


def test_keep_broken_variant_rollback_keeps_the_wrong_slots(model):
    """Rolling back to the path's length keeps the first slots (siblings), not the path: wrong logits."""
    prompt = torch.tensor([[1, 2, 3, 4]])
    nodes = torch.tensor([[3, 1, 2, 4, 0, 5, 1]])
    path = _paths(PARENTS)[6]
    state = model.init_state(1, 32)
    model(prompt, state=state)
    model(nodes, state=state, pattern=tree(PARENTS, state.lengths))
    state.rollback(state.lengths - len(PARENTS) + len(path))
    got = model(torch.tensor([[2]]), state=state)[0, -1]
    ref = model(torch.cat([prompt[0], nodes[0, path], torch.tensor([2])])[None])[0, -1]
    assert (got - ref).abs().max() > 1e-3


def test_keep_needs_the_last_advance(model):
    state = model.init_state(1, 32)
    with pytest.raises(ValueError, match="most recent advance"):
        state.keep(torch.ones(1, 3, dtype=torch.bool))
    model(torch.tensor([[1, 2, 3]]), state=state)
    with pytest.raises(ValueError, match=r"keep must be \(batch"):
        state.keep(torch.ones(1, 2, dtype=torch.bool))
