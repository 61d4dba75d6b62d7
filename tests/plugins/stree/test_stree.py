"""STree: a token tree verified through Mamba's recurrence in one pass.

Properties: every node's logits equal running the model step by step along its root-to-node path
(float64, both kernel backends); the state after ``keep`` equals the accepted path's state; greedy
``stree`` equals plain greedy with fewer target passes than tokens; sampling keeps the target law.
"""

import pytest
import torch

from genloom.core import kernels
from genloom.core.generation import run
from genloom.testing import exact_continuations, tiny_model
from genloom.toolkit.tree import TreeShape

VOCAB = 6
PROMPTS = [[1, 2, 3, 4, 5], [2], [5, 0, 1]]
PREFIX = torch.tensor([[1, 2, 3, 4, 5], [0, 0, 2, 3, 1]])
VALID = torch.tensor([[True] * 5, [False, False, True, True, True]])


def mamba_config(d_model=16, n_layers=2):
    return {
        "tokenizer": {"name": "ids", "vocab_size": VOCAB},
        "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
        "backbone": {"name": "mamba", "d_model": d_model, "n_layers": n_layers, "d_state": 4, "d_conv": 4},
        "objective": {"name": "next-token"},
    }


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    built = tiny_model(base=mamba_config())
    built.model.eval()
    return built


def _tree_logits(model, tokens, parents, backend="accumulated"):
    state = model.init_state(2, 16)
    model(PREFIX, state=state, valid=VALID)
    with kernels.use("tree_selective_scan", backend):
        out = model.head(model.backbone.forward_tree(model.head.embed(tokens), parents=parents, state=state))
    return out, state


def _path_error(model, tokens, logits, shape):
    worst = 0.0
    for b in range(2):
        for i in range(shape.size):
            path = shape.ancestors[i].nonzero().flatten()
            ref = model(torch.cat([PREFIX[b][VALID[b]], tokens[b, path]])[None])[0, -1]
            worst = max(worst, (ref - logits[b, i]).abs().max().item())
    return worst


@pytest.mark.parametrize("backend", ["recurrence", "accumulated"])
def test_node_logits_equal_the_recurrence_along_each_path(target, backend):
    model = tiny_model(base=mamba_config()).model.double().eval()
    model.load_state_dict({k: v.double() for k, v in target.model.state_dict().items()})
    shape = TreeShape((3, 2, 1))
    tokens = torch.randint(0, VOCAB, (2, shape.size), generator=torch.Generator().manual_seed(0))
    logits, _ = _tree_logits(model, tokens, shape.parents, backend)
    assert _path_error(model, tokens, logits, shape) < 1e-10
    # broken variant: the nodes read as one chain (breadth-first order) -- siblings leak into each other
    chain = tuple(range(-1, shape.size - 1))
    wrong, _ = _tree_logits(model, tokens, chain, backend)
    assert _path_error(model, tokens, wrong, shape) > 1e-3


def test_accumulated_products_agree_with_the_recurrence_float32(target):
    shape = TreeShape((2, 3, 2))
    tokens = torch.randint(0, VOCAB, (2, shape.size), generator=torch.Generator().manual_seed(1))
    ref, _ = _tree_logits(target.model, tokens, shape.parents, "recurrence")
    fast, _ = _tree_logits(target.model, tokens, shape.parents, "accumulated")
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert _path_error(target.model, tokens, fast, shape) < 1e-5


def test_keep_leaves_the_accepted_paths_state(target):
    model = target.model
    shape = TreeShape((2, 2, 1))
    tokens = torch.randint(0, VOCAB, (2, shape.size), generator=torch.Generator().manual_seed(2))
    _, state = _tree_logits(model, tokens, shape.parents)
    node = torch.tensor([8, 4])  # a leaf in row 0, an inner node in row 1
    state.keep(shape.ancestors_mask(node))
    nxt = torch.tensor([[2], [3]])
    got = model(nxt, state=state)[:, -1]
    for b in range(2):
        path = shape.ancestors[node[b]].nonzero().flatten()
        ref = model(torch.cat([PREFIX[b][VALID[b]], tokens[b, path], nxt[b]])[None])[0, -1]
        torch.testing.assert_close(got[b], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="root-to-node path"):
        _, state = _tree_logits(model, tokens, shape.parents)
        bad = shape.ancestors_mask(node).clone()
        bad[:, 2] = True  # node 2, a sibling branch of node 1 (on both paths), added
        state.keep(bad)


def noisy_copy(built, noise, branching, greedy, seed=1):
    dec = built.ctx.build("decoder", {"name": "stree", "draft": mamba_config(), "branching": list(branching), "greedy": greedy})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p_draft, p_target in zip(dec.draft.parameters(), built.model.parameters()):
            p_draft.copy_(p_target + noise * p_target.std() * torch.randn(p_target.shape, generator=gen))
    return dec


def test_greedy_stree_equals_plain_greedy_with_fewer_target_passes(target, monkeypatch):
    calls = []
    tree_method = type(target.model.backbone).forward_tree
    monkeypatch.setattr(type(target.model.backbone), "forward_tree", lambda self, *a, **k: calls.append(1) or tree_method(self, *a, **k))
    reference = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=24)
    out = run(target.model, PROMPTS, noisy_copy(target, 0.5, (3, 2, 1), greedy=True), max_new_tokens=24)
    assert out.ids == reference.ids
    m = out.metrics
    assert len(calls) == m.steps  # every round verified its tree through the SSM's tree method, once
    assert m.forward_passes["target"] == 1 + m.steps < 24
    assert m.tokens_per_forward > 1.0


def test_without_the_tree_kernel_mamba_falls_back_to_paths(target, monkeypatch):
    monkeypatch.setattr(type(target.model.backbone), "serves_trees", lambda self: False)
    reference = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=12)
    out = run(target.model, PROMPTS, noisy_copy(target, 0.5, (2, 2), greedy=True), max_new_tokens=12)
    assert out.ids == reference.ids


def test_config_errors(target):
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="branching"):
        target.ctx.build("decoder", {"name": "stree", "draft": mamba_config(), "branching": [2, 0]})
    with pytest.raises(ConfigError, match="draft model is required"):
        target.ctx.build("decoder", {"name": "stree"})


@pytest.mark.slow
def test_sampled_continuations_on_mamba_follow_the_target_distribution():
    """Chi-square on 20k 2-token continuations against the enumerated target law; the draft's own
    law is rejected by the same test."""
    stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(0)
    target = tiny_model(base=mamba_config(8, 1))
    target.model.eval()
    prompt, draws = [1, 4, 2], 20_000
    dec = target.ctx.build("decoder", {"name": "stree", "draft": mamba_config(8, 1), "branching": [2, 2], "seed": 3})
    out = run(target.model, [prompt] * draws, dec, max_new_tokens=2, seed=123)
    exact_target = exact_continuations(target.model, prompt, 2, (), VOCAB)
    exact_draft = exact_continuations(dec.draft, prompt, 2, (), VOCAB)
    counts = {seq: 0 for seq in exact_target}
    for ids in out.ids:
        counts[tuple(ids)] += 1
    observed = [counts[s] for s in exact_target]
    assert stats.chisquare(observed, [exact_target[s] * draws for s in exact_target]).pvalue > 1e-3
    total = sum(exact_draft.values())
    assert stats.chisquare(observed, [exact_draft[s] * draws / total for s in exact_target]).pvalue < 1e-6
    assert out.metrics.mean_acceptance_length > 0  # drafted tokens were accepted through the tree
