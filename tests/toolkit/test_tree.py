"""Tree speculative decoding (genloom.toolkit.tree): greedy parity, exact output law, every backbone a target."""

import copy

import pytest
import torch

from genloom.core.generation import run
from genloom.testing import exact_continuations, tiny_model
from genloom.toolkit.tree import TreeDraftConfig, TreeShape, TreeSpeculativeDecoder, verify_sampling

VOCAB = 6
PROMPTS = [[1, 2, 3, 4, 5], [2], [5, 0, 1]]  # left padding, per-sequence acceptance


def model_config(d_model=32, n_layers=2, backbone="transformer", vocab=VOCAB):
    node = {"name": backbone, "d_model": d_model, "n_layers": n_layers}
    if backbone == "transformer":
        node["n_heads"] = 2
    return {
        "tokenizer": {"name": "ids", "vocab_size": vocab},
        "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
        "backbone": node,
        "objective": {"name": "next-token"},
    }


def noisy_copy(built, noise, config, branching, greedy, seed=1):
    """A tree decoder whose draft has the target's architecture, weights = the target's plus noise."""
    dec = TreeSpeculativeDecoder(TreeDraftConfig(draft=config, branching=branching, greedy=greedy), built.ctx)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p_draft, p_target in zip(dec.draft.parameters(), built.model.parameters()):
            p_draft.copy_(p_target + noise * p_target.std() * torch.randn(p_target.shape, generator=gen))
    return dec


def test_tree_shape():
    shape = TreeShape((2, 3))
    assert shape.parents == (-1, 0, 0, 1, 1, 1, 2, 2, 2)
    assert shape.paths.tolist()[0] == [0, 1, 3] and shape.paths.shape == (6, 3)
    assert shape.ancestors_mask(torch.tensor([7])).nonzero()[:, 1].tolist() == [0, 2, 7]
    with pytest.raises(ValueError, match="branching"):
        TreeDraftConfig(branching=(2, 0))


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(0)
    built = tiny_model(base=model_config())
    built.model.eval()
    return built


@pytest.mark.parametrize("branching", [(1, 1, 1), (3, 2, 1)])
def test_greedy_equals_target_greedy_in_one_pass_per_round(transformer, branching):
    reference = run(transformer.model, PROMPTS, transformer.ctx.build("decoder", "greedy"), max_new_tokens=24)
    dec = noisy_copy(transformer, 1.0, model_config(), branching, greedy=True)
    out = run(transformer.model, PROMPTS, dec, max_new_tokens=24)
    assert out.ids == reference.ids
    m = out.metrics
    assert m.forward_passes["target"] < 24  # one target pass per round, several tokens per pass
    assert m.tokens_per_forward > 1.0
    # a draft equal to the target walks to a leaf every round
    same = run(transformer.model, PROMPTS, noisy_copy(transformer, 0.0, model_config(), branching, greedy=True), max_new_tokens=24)
    assert same.ids == reference.ids and same.metrics.mean_acceptance_length == len(branching)


def test_a_wider_tree_accepts_more_than_a_chain_of_equal_depth(transformer):
    chain = run(transformer.model, PROMPTS, noisy_copy(transformer, 1.5, model_config(), (1, 1, 1), greedy=True), max_new_tokens=32)
    wide = run(transformer.model, PROMPTS, noisy_copy(transformer, 1.5, model_config(), (3, 2, 1), greedy=True), max_new_tokens=32)
    assert wide.metrics.mean_acceptance_length > chain.metrics.mean_acceptance_length


def test_mamba_target_and_draft_without_the_tree_pattern():
    """A recurrent backbone serves no tree pattern: the draft drafts each level as batch rows of a
    copy of its state, the target verifies each root-to-leaf path as a batch row (one pass)."""
    torch.manual_seed(0)
    config = model_config(backbone="mamba")
    target = tiny_model(base=config)
    target.model.eval()
    reference = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=24)
    out = run(target.model, PROMPTS, noisy_copy(target, 0.5, config, (3, 2, 1), greedy=True), max_new_tokens=24)
    assert out.ids == reference.ids
    m = out.metrics
    assert m.forward_passes["target"] == 1 + m.steps  # prefill, then one target pass per tree
    assert m.forward_passes["target"] < 24 / 2 and m.mean_acceptance_length > 1


def test_verify_sampling_one_level_follows_the_target_law():
    """The multi-draft rule alone, on one node with 3 i.i.d. children; the broken variant (no
    residual update between children: each child tested against p itself) is biased."""
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    n, V = 40_000, 5
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    q = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3], dtype=torch.float64)
    shape = TreeShape((3,))
    target = p.expand(n, shape.size, V).clone()
    draft = q.expand(n, shape.size, V).clone()
    tokens = torch.zeros(n, shape.size, dtype=torch.long)
    tokens[:, 1:] = torch.multinomial(q.expand(n, V), 3, replacement=True, generator=gen)
    result = verify_sampling(shape, target, draft, tokens, gen)
    first = torch.where(result.num_accepted > 0, tokens.gather(1, result.node[:, None]).squeeze(1), result.next_token)
    observed = torch.bincount(first, minlength=V).double()
    assert stats.chisquare(observed, p * n).pvalue > 1e-3
    # broken variant: each child tested against p (never the residual), resampling from norm(p - q)
    u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    x = tokens[:, 1:]
    passes = u < (p[x] / q[x]).clamp(max=1)
    any_pass = passes.any(1)
    chosen = x.gather(1, passes.int().argmax(1, keepdim=True)).squeeze(1)
    resid = (p - q).clamp_min(0)
    fallback = torch.multinomial(resid / resid.sum(), n, replacement=True, generator=gen)
    broken = torch.where(any_pass, chosen, fallback)
    assert stats.chisquare(torch.bincount(broken, minlength=V).double(), p * n).pvalue < 1e-6


@pytest.mark.slow
def test_sampled_continuations_follow_the_target_distribution():
    """End to end: 2-token continuations from tree speculation vs the exact target law (enumerated),
    chi-square on 20k draws; the draft's own law is rejected by the same test."""
    stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(0)
    small = model_config(16, 1)
    target = tiny_model(base=small)
    target.model.eval()
    prompt = [1, 4, 2]
    draws = 20_000
    dec = noisy_copy(target, 0.5, small, (3, 2), greedy=False)
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
    assert out.metrics.mean_acceptance_length > 0


def test_static_cache_equals_dynamic_cache(transformer, monkeypatch):
    """``cache: static`` (a StaticKVCache for the target, and here for the draft too) gives the
    dynamic cache's tokens, greedy and sampled with one seed; a sequence that finishes early keeps
    nothing of later trees, so the fixed capacity suffices. Broken variant: drafting without the
    tree pattern on a shallow copy of a static draft state (which reorders and advances in place)
    corrupts the draft's state: the sampled tokens change, or the shared store overflows."""
    from genloom.core import static_decode
    from genloom.toolkit import tree as tree_mod

    def static_pair(branching, greedy):
        dec = noisy_copy(transformer, 1.0, model_config(), branching, greedy=greedy)
        dynamic = run(transformer.model, PROMPTS, dec, max_new_tokens=24, seed=3)
        dec._draft = static_decode.prepare(dec.draft)
        return dynamic, dec

    for branching, greedy in [((1, 1, 1), True), ((3, 2, 1), False), ((1, 1, 1), False)]:
        dynamic, dec = static_pair(branching, greedy)
        static = run(transformer.model, PROMPTS, dec, max_new_tokens=24, seed=3, cache="static")
        assert static.ids == dynamic.ids, branching
        assert static.metrics.forward_passes == dynamic.metrics.forward_passes
    # the copy route of drafting (a draft backbone without the tree pattern), fixed and broken
    monkeypatch.setattr(tree_mod, "serves_tree", lambda model, state: False)
    dynamic, dec = static_pair((1, 1, 1), False)
    assert run(transformer.model, PROMPTS, dec, max_new_tokens=24, seed=3, cache="static").ids == dynamic.ids
    monkeypatch.setattr(tree_mod, "_fork", copy.copy)
    try:
        broken = run(transformer.model, PROMPTS, dec, max_new_tokens=24, seed=3, cache="static").ids
    except (IndexError, ValueError):  # the shared store overflows
        broken = None
    assert broken != dynamic.ids


def processors(built, *specs):
    return [built.ctx.build("processor", spec) for spec in specs]


def test_greedy_with_history_processors_equals_greedy_decoding(transformer, monkeypatch):
    """Processors apply at every node with that node's own history: greedy tree speculation with a
    repetition penalty and no-repeat-2-gram equals plain greedy decoding with them. Broken variant:
    every node processed with the committed history only (the drafted path left out)."""
    from genloom.toolkit import tree as tree_mod

    procs = processors(transformer, {"name": "repetition-penalty", "penalty": 3.0}, {"name": "no-repeat-ngram", "n": 2})
    greedy = transformer.ctx.build("decoder", "greedy")
    reference = run(transformer.model, PROMPTS, greedy, max_new_tokens=24, processors=procs)
    assert reference.ids != run(transformer.model, PROMPTS, greedy, max_new_tokens=24).ids  # the processors matter here
    for branching in [(1, 1, 1), (3, 2, 1)]:
        out = run(transformer.model, PROMPTS, noisy_copy(transformer, 0.5, model_config(), branching, greedy=True), max_new_tokens=24, processors=procs)
        assert out.ids == reference.ids and out.metrics.mean_acceptance_length > 1
    aded = transformer.ctx.build("decoder", {"name": "aded", "branching": [2, 2, 1]})  # a TreeDecoder without a draft model
    assert run(transformer.model, PROMPTS, aded, max_new_tokens=24, processors=procs).ids == reference.ids
    real = tree_mod.process_nodes

    def committed_history_only(session, shape, logits, tokens, nodes):
        return real(session, shape, logits, torch.zeros_like(tokens).fill_(-1), nodes)  # -1: padding, ignored

    monkeypatch.setattr(tree_mod, "process_nodes", committed_history_only)
    broken = run(transformer.model, PROMPTS, noisy_copy(transformer, 0.5, model_config(), (3, 2, 1), greedy=True), max_new_tokens=24, processors=procs)
    assert broken.ids != reference.ids


def test_sampling_follows_the_processed_target_law(monkeypatch):
    """Sampling with temperature 1.5 and top-k 4: 2-token continuations follow the processed
    target's law (enumerated), chi-square; broken variant: the target's logits left unprocessed
    (the draft still processed) gives a law the same test rejects."""
    stats = pytest.importorskip("scipy.stats")
    from genloom.toolkit.tree import TreeDecoder, target_tree_logits

    torch.manual_seed(0)
    small = model_config(16, 1)
    target = tiny_model(base=small)
    target.model.eval()
    procs = processors(target, {"name": "temperature", "temperature": 1.5}, {"name": "top-k", "k": 4})
    prompt, draws = [1, 4, 2], 6000
    exact = exact_continuations(target.model, prompt, 2, procs, VOCAB)
    support = [s for s in exact if exact[s] > 0]

    def chi2(out):
        counts = {}
        for ids in out.ids:
            counts[tuple(ids)] = counts.get(tuple(ids), 0) + 1
        if not set(counts) <= set(support):  # top-k: nothing outside the processed support
            return 0.0
        return stats.chisquare([counts.get(s, 0) for s in support], [exact[s] * draws for s in support]).pvalue

    dec = noisy_copy(target, 0.5, small, (3, 2), greedy=False)
    out = run(target.model, [prompt] * draws, dec, max_new_tokens=2, seed=123, processors=procs)
    assert chi2(out) > 1e-3 and out.metrics.mean_acceptance_length > 0.3

    def unprocessed(self, session, tokens):
        logits, session.scratch["keep"] = target_tree_logits(session, session.model, session.state, tokens, self.shape)
        return logits

    monkeypatch.setattr(TreeDecoder, "target_logits", unprocessed)
    broken = run(target.model, [prompt] * draws, noisy_copy(target, 0.5, small, (3, 2), greedy=False), max_new_tokens=2, seed=123, processors=procs)
    assert chi2(broken) < 1e-6
