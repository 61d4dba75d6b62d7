"""LANTERN++ (decoder ``lantern-pp``): a static top-k tree, exact with the relaxation off.

The defining properties: the tree's topology and children do not depend on the draft's confidence
(always its top-k); with the relaxation off the committed tokens follow the target's law
(chi-square against the enumerated law), at least one token per target pass; with it on, a
node's token law is within ``delta`` per tested child of the target's (enumerated).
"""

import pytest
import torch

from genloom.core.generation import run
from genloom.testing import exact_continuations, tiny_model
from genloom.toolkit.acceptance import ExactAcceptance, RelaxedAcceptance, total_variation
from genloom.toolkit.tree import TreeShape, verify_sampling, verify_static

VOCAB = 6
PROMPT = [1, 4, 2]


def model_config(d_model=16, n_layers=1, vocab=VOCAB):
    return {
        "tokenizer": {"name": "ids", "vocab_size": vocab},
        "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
        "backbone": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": 2},
        "objective": {"name": "next-token"},
    }


CONFIG = model_config()


@pytest.fixture(scope="module")
def target():
    built = tiny_model(base=CONFIG, seed=0)
    built.model.eval()
    return built


def decoder(built, branching=(2, 2), noise=1.0, **fields):
    dec = built.ctx.build("decoder", {"name": "lantern-pp", "draft": CONFIG, "branching": list(branching), **fields})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p_draft, p_target in zip(dec.draft.parameters(), built.model.parameters()):
            p_draft.copy_(p_target + noise * p_target.std() * torch.randn(p_target.shape, generator=gen))
    return dec


def chisquare_pvalue(observed, law):
    stats = pytest.importorskip("scipy.stats")
    expected = law * observed.sum()
    keep = expected > 0
    return stats.chisquare(observed[keep].numpy(), expected[keep].numpy()).pvalue


def continuation_test(built, dec, draws, seed=3):
    out = run(built.model, [PROMPT] * draws, dec, max_new_tokens=2, seed=seed)
    exact = exact_continuations(built.model, PROMPT, 2, (), VOCAB)
    counts = {s: 0 for s in exact}
    for ids in out.ids:
        counts[tuple(ids)] += 1
    observed = torch.tensor([counts[s] for s in exact], dtype=torch.float64)
    return chisquare_pvalue(observed, torch.tensor([exact[s] for s in exact], dtype=torch.float64)), out


def random_laws(batch, nodes, seed, sharp=1.5):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharp * torch.randn(batch, nodes, VOCAB, generator=g, dtype=torch.float64), -1)


def test_static_point_mass_verification_is_exact_by_sampling():
    """Math level, 40k rows: a static tree (children = top-2 of arbitrary laws) verified by
    ``verify_static`` yields a first token distributed as the root's target law. Broken variant:
    verifying the same static children with the i.i.d.-draft rule ``min(1, r/q)`` is biased."""
    shape = TreeShape((2,))
    draws = 40_000
    p = random_laws(1, shape.size, seed=0).expand(draws, -1, -1)
    q = random_laws(1, shape.size, seed=1).expand(draws, -1, -1)
    tokens = torch.zeros(draws, shape.size, dtype=torch.long)
    tokens[:, 1:] = q[:, 0].topk(2, dim=-1).indices  # static: the draft's top-2
    g = torch.Generator().manual_seed(2)
    for rule in (None, RelaxedAcceptance(torch.arange(VOCAB)[:, None], 0.5)):  # k = 1: relaxation off
        result = verify_static(shape, p, tokens, rule, g)
        first = result.tokens(shape, tokens)[:, 0]
        assert chisquare_pvalue(torch.bincount(first, minlength=VOCAB).double(), p[0, 0]) > 1e-3
    broken = verify_sampling(shape, p, q, tokens, g)
    first = broken.tokens(shape, tokens)[:, 0]
    assert chisquare_pvalue(torch.bincount(first, minlength=VOCAB).double(), p[0, 0]) < 1e-6


def test_relaxed_static_verification_stays_within_delta_per_child():
    """Enumerated (one node, ``b`` children): the relaxed law of the node's token is within
    ``b * delta`` of the target's; each child's acceptance rises by at most ``delta``."""
    p = random_laws(200, 1, seed=3)[:, 0]
    g = torch.Generator().manual_seed(4)
    neighbours = torch.stack([torch.roll(torch.arange(VOCAB), -i) for i in range(VOCAB)], 1)  # ring neighbourhoods
    for b, delta in [(1, 0.1), (2, 0.1), (3, 0.2)]:
        children = torch.stack([torch.randperm(VOCAB, generator=g)[:b] for _ in range(200)])
        rule = RelaxedAcceptance(neighbours, delta)
        law = torch.zeros_like(p)
        reach = torch.ones(200, dtype=torch.float64)
        r = p.clone()
        for j in range(b):
            x = children[:, j]
            point = torch.nn.functional.one_hot(x, VOCAB).double()
            a = rule.accept_probability(r, point, x)
            exact = ExactAcceptance().accept_probability(r, point, x)
            assert bool((a - exact <= delta + 1e-12).all()) and bool((a >= exact - 1e-12).all())
            law += (reach * a)[:, None] * point
            reach = reach * (1 - a)
            mass = (r - point).clamp_min(0)
            r = mass / mass.sum(-1, keepdim=True)
        law += reach[:, None] * r
        assert torch.allclose(law.sum(-1), torch.ones(200, dtype=torch.float64))
        assert float(total_variation(law, p).max()) <= b * delta + 1e-12


def test_children_are_the_drafts_top_k_whatever_its_confidence(target):
    """Static tree drafting: every node's children are the draft's top-k tokens, for a confident and
    for a flat draft alike (a dynamic tree would prune the flat one)."""
    for noise in (0.0, 3.0):
        dec = decoder(target, branching=(3, 2), noise=noise)
        from genloom.core.generation import Session

        session = Session(target.model, [PROMPT], max_new_tokens=4, generator=torch.Generator().manual_seed(0))
        dec.start(session)
        tokens, _ = dec.propose(session)
        with torch.no_grad():
            q = torch.softmax(dec.draft(torch.tensor([PROMPT]))[0, -1], -1)
        assert tokens[0, 1:4].tolist() == q.topk(3).indices.tolist()
        assert tokens.shape == (1, dec.shape.size)


def test_relaxation_off_follows_the_target_fast(target):
    """Small variant (3k two-token continuations, chi-square); at least one token per target pass."""
    dec = decoder(target, branching=(2, 2), neighbourhood_size=1)
    assert dec.exact == "sampling"
    pvalue, out = continuation_test(target, dec, 3_000)
    assert pvalue > 1e-3
    m = out.metrics  # one verification pass per round (plus the prompt's prefill), >= 1 token each
    assert m.forward_passes["target"] - 1 == m.steps and m.tokens_generated / m.batch_size / m.steps >= 1.0
    assert m.mean_acceptance_length > 0


@pytest.mark.slow
def test_relaxation_off_follows_the_target_20k():
    """20k two-token continuations with a (3, 2, 1) static tree and delta 0: chi-square against the
    enumerated target law. Broken variant: the same static tree verified with the i.i.d. rule
    (draft probabilities) fails it."""
    target = tiny_model(base=CONFIG, seed=0)
    target.model.eval()
    dec = decoder(target, branching=(3, 2, 1), delta=0.0)
    pvalue, _ = continuation_test(target, dec, 20_000)
    assert pvalue > 1e-3
    import genloom.plugins.lantern_pp.decoder as module

    original = module.verify_static
    draft_probs = {}
    try:  # broken: verify the top-k children as if they were sampled from the draft
        module.verify_static = lambda shape, tp, tokens, rule, g: verify_sampling(shape, tp, draft_probs["q"], tokens, g)
        original_draft = dec.draft_tree

        def draft_tree(session):
            tokens, q = original_draft(session)
            draft_probs["q"] = q
            return tokens, q

        dec.draft_tree = draft_tree
        broken, _ = continuation_test(target, dec, 20_000)
    finally:
        module.verify_static = original
    assert broken < 1e-6


def test_greedy_equals_target_greedy(target):
    prompts = [[1, 2, 3, 4, 5], [2], [5, 0, 1]]
    reference = run(target.model, prompts, target.ctx.build("decoder", "greedy"), max_new_tokens=12)
    dec = decoder(target, branching=(2, 2), greedy=True)
    assert dec.exact == "greedy"
    assert run(target.model, prompts, dec, max_new_tokens=12).ids == reference.ids


def test_relaxation_accepts_deeper(target):
    """With the relaxation on (all tokens neighbours, delta 0.3) paths are accepted deeper than exact."""
    prompts = [PROMPT] * 64
    exact = run(target.model, prompts, decoder(target, branching=(2, 2, 2), delta=0.0), max_new_tokens=12, seed=0)
    relaxed = run(target.model, prompts, decoder(target, branching=(2, 2, 2), neighbourhood_size=VOCAB, delta=0.3), max_new_tokens=12, seed=0)
    assert relaxed.metrics.mean_acceptance_length > exact.metrics.mean_acceptance_length
    assert decoder(target, neighbourhood_size=VOCAB, delta=0.3).exact is None


def test_config_errors(target):
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="delta"):
        target.ctx.build("decoder", {"name": "lantern-pp", "draft": CONFIG, "delta": -0.1})
    with pytest.raises(ConfigError, match="branching"):
        target.ctx.build("decoder", {"name": "lantern-pp", "draft": CONFIG, "branching": []})
