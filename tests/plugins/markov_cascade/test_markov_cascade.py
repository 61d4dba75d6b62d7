"""Cascaded decoding with a Markov transformer.

Properties: (1) the Markov transformer's logits at t have an exactly zero Jacobian with respect to
every token before t - m + 1 (so before t - m too) and a nonzero one inside the window, and it keeps
the backbone contract (full == incremental, rollback, reorder, left padding); (2) with no pruning
the cascade's last stage is exact Viterbi of the order-m CRF: its sequence is the brute-force
argmax over all V^L sequences of the sum of order-m log-probabilities; (3) max-marginal pruning
never removes the stage's own Viterbi path, at every stage; (4) the max-marginal scans are
ceil(log2 L) levels deep (sub-linear depth).

Broken variants caught: a window one token too long (order m + 1 inside an order-m model) fails
the zero-Jacobian check; pruning by each state's local score instead of its max-marginal removes a
stage's Viterbi path; a cascade without the suffix scan (forward scores only) is not exact.
"""

import itertools
import math

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.markov_cascade import cascade as C
from genloom.plugins.markov_cascade.backbone import MarkovTransformer
from genloom.testing import check_backbone, check_decoder, tiny_model

VOCAB, ORDER, LENGTH = 5, 2, 5
CONFIG = {
    "tokenizer": {"name": "ids", "vocab_size": VOCAB},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "markov-transformer", "order": ORDER, "d_model": 16, "n_layers": 2, "n_heads": 2},
    "objective": {"name": "next-token"},
}


@pytest.fixture(scope="module")
def built():
    b = tiny_model(base=CONFIG, seed=0)
    b.model.double().eval()
    return b


def scorer(model):
    def score(contexts, valid):
        with torch.no_grad():
            return model(contexts, valid=valid)[:, -1].double().log_softmax(-1)
    return lambda k: score


def sequence_score(model, context, seqs):
    """Sum over t of log p(x_t | the last ORDER tokens), for a batch of sequences (N, L)."""
    full = torch.cat([torch.tensor(context).expand(seqs.shape[0], -1), seqs], 1)
    with torch.no_grad():
        logp = model(full).double().log_softmax(-1)  # a Markov model: the full forward is the order-m score
    P = len(context)
    return logp[:, P - 1:-1].gather(2, seqs[..., None]).squeeze(-1).sum(1)


def jacobian(backbone, length=8, dim=16):
    torch.manual_seed(0)
    h = torch.randn(1, length, dim, dtype=torch.float64, requires_grad=True)
    out = backbone(h)
    rows = []
    for t in range(length):
        (g,) = torch.autograd.grad(out[0, t].sum() + 0 * out.sum(), h, retain_graph=True)
        rows.append(g[0].abs().sum(-1))
    return torch.stack(rows)  # (t, s): |d out_t / d h_s|


def markov_ok(dep, order):
    L = dep.shape[0]
    t, s = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    outside = s < t - order + 1
    inside = (s <= t) & ~outside
    return float(dep[outside].abs().max()) == 0.0 and bool((dep[inside] > 0).all())


def test_zero_jacobian_before_the_window(built):
    assert markov_ok(jacobian(built.model.backbone), ORDER)
    # broken variant: the same network with a window one input too long is not order-m Markov
    wide = MarkovTransformer(ORDER + 1, built.model.backbone.window, 16).double()
    assert not markov_ok(jacobian(wide), ORDER)


def test_backbone_contract():
    check_backbone({"name": "markov-transformer", "order": 3, "d_model": 16, "n_layers": 1, "n_heads": 2}, length=9, chunks=(1, 3, 2, 3))


def test_no_pruning_is_exact_viterbi_of_the_order_m_crf(built):
    model = built.model
    every = torch.tensor(list(itertools.product(range(VOCAB), repeat=LENGTH)))
    greedy = built.ctx.build("decoder", "greedy")
    for context in ([3], [1, 4, 2], [0]):
        scores = sequence_score(model, context, every)
        best = every[scores.argmax()].tolist()
        if context == [0]:  # here greedy decoding is not the most likely sequence: the check can fail
            assert run(model, [context], greedy, max_new_tokens=LENGTH).ids[0] != best
        result = C.cascade(scorer(model), context, VOCAB, LENGTH, ORDER, max_states=None)
        assert result.tokens == best
        assert math.isclose(result.score, float(scores.max()), rel_tol=1e-10)
        # the last stage's lattice was complete: V^m states at every position past the prompt
        assert result.stages[-1]["states"][ORDER - 1:] == [VOCAB ** ORDER] * (LENGTH - ORDER + 1)


def test_pruning_never_removes_the_stages_viterbi_path(built):
    for context in ([0], [3], [2, 2], [1, 4, 2]):
        for keep in (1, 2, 3):
            result = C.cascade(scorer(built.model), context, VOCAB, LENGTH, 3, max_states=keep)
            assert all(stage["path_kept"] for stage in result.stages[:-1])


def local_prune(lattice, marginals, max_states):
    """Broken variant: keep the states whose own incoming edge is best, ignoring the rest of the path."""
    keep = []
    for t, mm in enumerate(marginals):
        local = lattice.edges[t].amax(0)
        keep.append(local.topk(min(max_states, local.numel())).indices.sort().values)
    return keep


def test_local_pruning_loses_the_viterbi_path(built, monkeypatch):
    monkeypatch.setattr(C, "prune", local_prune)
    lost = 0
    for context in ([0], [3], [2, 2], [1, 4, 2], [4], [1]):
        result = C.cascade(scorer(built.model), context, VOCAB, LENGTH, 3, max_states=1)
        lost += not all(stage["path_kept"] for stage in result.stages[:-1])
    assert lost > 0


def test_scan_depth_is_logarithmic(built):
    for length in (2, 5, 9, 16):
        result = C.cascade(scorer(built.model), [1], VOCAB, length, ORDER, max_states=3)
        assert all(stage["scan_depth"] == math.ceil(math.log2(length)) for stage in result.stages[:-1])  # the last stage runs Viterbi only


def test_scan_equals_sequential_max_marginals(built):
    lattice = C.first_lattice([2], VOCAB, 6)
    C.score_edges(lattice, scorer(built.model)(1))
    marginals, _ = C.max_marginals(lattice)
    alpha, alphas = torch.zeros(1, dtype=torch.float64), []
    for e in lattice.edges:
        alpha = (alpha[:, None] + e).amax(0)
        alphas.append(alpha)
    beta, betas = torch.zeros(VOCAB, dtype=torch.float64), [None] * len(lattice.edges)
    betas[-1] = beta
    for t in range(len(lattice.edges) - 1, 0, -1):
        beta = (lattice.edges[t] + beta[None]).amax(1)
        betas[t - 1] = beta
    sequential, depth = C.max_marginals(lattice, parallel=False)
    assert depth == 6
    for mm, a, b, seq in zip(marginals, alphas, betas, sequential):
        assert torch.allclose(mm, a + b, atol=1e-12) and torch.allclose(seq, a + b, atol=1e-12)
    # broken variant: forward scores alone are not max-marginals
    assert not all(torch.allclose(mm, a, atol=1e-12) for mm, a in zip(marginals, alphas))


def test_decoder_on_the_core_loop(built):
    result = check_decoder(built, {"name": "markov-cascade", "max_states": 3}, prompts=((1, 2, 3), (4,)), max_new_tokens=LENGTH)
    assert all(len(ids) == LENGTH for ids in result.ids)
    parallel = run(built.model, [[1, 2, 3], [4]], built.ctx.build("decoder", {"name": "markov-cascade", "max_states": 3, "parallel": True}), max_new_tokens=LENGTH)
    assert parallel.ids == result.ids and parallel.metrics.extra["scan_depth"] == math.ceil(math.log2(LENGTH))
    exact = run(built.model, [[1, 4, 2]], built.ctx.build("decoder", {"name": "markov-cascade", "max_states": None}), max_new_tokens=LENGTH)
    every = torch.tensor(list(itertools.product(range(VOCAB), repeat=LENGTH)))
    assert exact.ids[0] == every[sequence_score(built.model, [1, 4, 2], every).argmax()].tolist()
    greedy = run(built.model, [[1, 4, 2]], built.ctx.build("decoder", "greedy"), max_new_tokens=LENGTH).ids[0]
    # the most likely sequence scores at least as high as greedy decoding's
    assert float(sequence_score(built.model, [1, 4, 2], torch.tensor([exact.ids[0]]))) >= float(sequence_score(built.model, [1, 4, 2], torch.tensor([greedy])))
