"""APAR: decoding the branches in parallel (one pass per step, tree attention) gives exactly the
branches that decoding each one sequentially from its own prefix gives, in as many steps as the
longest branch. Broken variant: a causal pattern (siblings see each other) changes the branches."""

import pytest
import torch

from genloom.core import config as config_mod
from genloom.core.generation import run
from genloom.core.model import assemble
from genloom.core.pattern import CAUSAL
from genloom.plugins.apar import AparConfig
from genloom.plugins.apar.branches import decode_branches
from genloom.plugins.apar.decoder import AparDecoder

PROMPT = list(b"the list: ")
CHILD = ord("*")
MAX_TOKENS, MAX_BRANCHES = 6, 64


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = {"tokenizer": {"name": "bytes"},
           "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
           "head": {"name": "lm"}, "objective": {"name": "next-token"}}
    return assemble(config_mod.validate(config_mod.compose(base=cfg)), data=False).model.double().eval()


@torch.no_grad()
def _greedy(model, ids):
    return int(model(torch.tensor([ids]), pattern=CAUSAL)[0, -1].argmax())


@torch.no_grad()
def _sequential(model, fork_id):
    """Each branch decoded on its own, as a plain causal sequence from prompt + its ancestors."""
    queue, out = [[]], set()
    while queue:
        start = queue.pop(0)
        path, own = list(start), []
        while len(own) < MAX_TOKENS:
            t = _greedy(model, PROMPT + path)
            path.append(t)
            own.append(t)
            if t == fork_id:
                queue.append(path + [CHILD])
        out.add((tuple(start), tuple(own)))
    return out


def _fork_token(model):
    """A token the model emits early on the main branch, so the tree forks."""
    seq = list(PROMPT)
    for _ in range(3):
        seq.append(_greedy(model, seq))
    return seq[-2]


def _as_set(result):
    out = set()
    for b in result.branches:
        nodes = b.nodes
        start = tuple(result.path(b.parent_node)) if b.parent_node >= 0 else ()
        own = [result.tokens[i] for i in nodes if not (b.parent_node >= 0 and i == b.parent_node)]
        out.add((start, tuple(own)))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_parallel_branches_equal_sequential_branches_in_longest_branch_steps(seed):
    model = _model(seed)
    fork = _fork_token(model)
    result = decode_branches(model, PROMPT, fork_id=fork, child_id=CHILD, max_branch_tokens=MAX_TOKENS, max_branches=MAX_BRANCHES)
    assert 1 < len(result.branches) < MAX_BRANCHES  # it forked, and the cap played no part
    assert _as_set(result) == _sequential(model, fork)
    # steps: the longest branch, counted from the step the branch started (fork step + 1)
    total = sum(b.generated for b in result.branches)
    assert result.steps < total
    start_step = {0: 0}
    # every branch generates MAX_TOKENS tokens here (no EOS), so steps = last start + MAX_TOKENS
    assert all(b.generated == MAX_TOKENS for b in result.branches)
    assert result.steps == max(_start_step(result, i) for i in range(len(result.branches))) + MAX_TOKENS


def _start_step(result, b):
    """The step a branch generated its first token at minus 1: its fork token's step."""
    if b == 0:
        return 0
    fork_node = result.parents[result.branches[b].parent_node]
    for i, br in enumerate(result.branches):
        if fork_node in br.nodes:
            own = [n for n in br.nodes if n != br.parent_node]
            return _start_step(result, i) + own.index(fork_node) + 1
    raise AssertionError


@torch.no_grad()
def test_siblings_are_mutually_invisible_and_a_causal_pattern_breaks_it():
    """Two sibling branches under one fork: branch A's logits do not change when sibling B's tokens
    do under the tree pattern; under a causal pattern (the broken variant) they do."""
    from genloom.core.pattern import tree

    model = _model(0)
    parents = (-1, 0, 1, 0, 3)  # fork node 0; branch A = nodes 1, 2; branch B = nodes 3, 4 (A's nodes come first)
    def logits_at_b(a_tokens, pattern):
        ids = torch.tensor([PROMPT + [ord("-")] + a_tokens + [CHILD, ord("q")]])
        return model(ids, pattern=pattern)[0, len(PROMPT) + 4]
    t = lambda: tree(parents, torch.tensor([len(PROMPT)]))  # noqa: E731
    one, two = [ord("a"), ord("b")], [ord("x"), ord("y")]
    torch.testing.assert_close(logits_at_b(one, t()), logits_at_b(two, t()), rtol=0, atol=1e-12)
    assert not torch.allclose(logits_at_b(one, CAUSAL), logits_at_b(two, CAUSAL), atol=1e-6)


def test_decoder_commits_every_branch_on_the_shared_loop():
    model = _model(0)
    fork = _fork_token(model)
    cfg = AparConfig(fork_id=fork, child_id=CHILD, max_branch_tokens=MAX_TOKENS, max_branches=MAX_BRANCHES)
    out = run(model, [PROMPT], AparDecoder(cfg), max_new_tokens=1000)
    result = decode_branches(model, PROMPT, fork_id=fork, child_id=CHILD, max_branch_tokens=MAX_TOKENS, max_branches=MAX_BRANCHES)
    assert out.ids[0] == result.flat()
    assert out.metrics.forward_passes["target"] == result.steps


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="child_id"):
        AparConfig(fork_id=3, child_id=3)
    with pytest.raises(ValueError, match="max_branches"):
        AparConfig(max_branches=0)


def test_logits_processors_are_refused_not_ignored():
    """The branches are decoded greedily from the model's own logits: a processor would be silently
    ignored, so the decoder refuses it with a clear error."""
    from genloom.core.errors import GenerationError

    model = _model(0)
    dec = AparDecoder(AparConfig(fork_id=ord("-"), child_id=CHILD, max_branch_tokens=2, max_branches=2))
    assert run(model, [PROMPT], dec, max_new_tokens=4).ids  # without processors it decodes
    with pytest.raises(GenerationError, match="no logits processors"):
        run(model, [PROMPT], dec, max_new_tokens=4, processors=[lambda logits, history: logits / 2])
