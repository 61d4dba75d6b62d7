"""OTSeq2Set: Hungarian matching equals brute force, the loss is invariant to the target's order,
the OT term vanishes when predictions equal the targets, and student forcing feeds own predictions."""

from __future__ import annotations

import itertools

import pytest
import torch

from genloom.core.data import SourceTargetPairs
from genloom.plugins.otseq2set.matching import brute_force_assignment, hungarian, sinkhorn_distance
from genloom.plugins.otseq2set.objective import set_loss, student_forcing_inputs
from genloom.testing import check_objective, tiny_model

S, T = 6, 6


def _built(**objective):
    base = {
        "data": {"name": "seq2seq", "task": "letter-set", "source_length": S, "target_length": T},
        "tokenizer": {"name": "bytes"},
        "head": {"name": "lm"},
        "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
        "objective": {"name": "otseq2set", **objective},
        "decoder": {"name": "greedy"},
    }
    b = tiny_model(base=base, seed=0)
    b.model.double()
    return b


def _batch(pairs):
    data = SourceTargetPairs(pairs, S, T, pad_id=256, eos_id=256)
    return torch.utils.data.default_collate([data[i] for i in range(len(data))])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_hungarian_equals_brute_force_over_permutations(n):
    g = torch.Generator().manual_seed(n)
    for _ in range(5):
        cost = torch.rand(n, n, generator=g, dtype=torch.float64)
        rows, cols = hungarian(cost)
        assert sorted(cols.tolist()) == list(range(n))
        assert abs(float(cost[rows, cols].sum()) - brute_force_assignment(cost)) < 1e-12
    # a broken variant: the identity assignment is not the minimum on some matrix
    costs = [torch.rand(3, 3, generator=g, dtype=torch.float64) for _ in range(20)]
    assert any(float(c.diagonal().sum()) > brute_force_assignment(c) + 1e-9 for c in costs)


def test_loss_is_invariant_to_the_order_of_the_target_set():
    b = _built()
    letters = [list(b"abc"), list(b"xy"), list(b"q")]
    sources = [list(b"cabba"), list(b"yyx"), list(b"qq")]
    reference = b.model.loss(_batch(list(zip(sources, letters))))["loss"]
    for perms in itertools.islice(itertools.product(*(itertools.permutations(x) for x in letters)), 12):
        loss = b.model.loss(_batch(list(zip(sources, [list(p) for p in perms]))))["loss"]
        assert abs(float(loss) - float(reference)) < 1e-9
    # a broken variant: the position-by-position (teacher order) cost changes with the order
    logits = torch.randn(4, 257, dtype=torch.float64)
    ordered = lambda labels: float(-logits[: len(labels)].log_softmax(-1)[torch.arange(len(labels)), torch.tensor(labels)].sum())
    assert abs(ordered([97, 98, 99]) - ordered([99, 98, 97])) > 1e-6
    matched = [float(set_loss(logits, torch.tensor(p), 256, None, 0.0, 0.05)["match"]) for p in ([97, 98, 99], [99, 98, 97])]
    assert abs(matched[0] - matched[1]) < 1e-12


def test_the_ot_term_vanishes_when_predictions_equal_the_targets():
    torch.manual_seed(0)
    embeddings = torch.randn(257, 16, dtype=torch.float64)
    labels = torch.tensor([5, 9, 2])
    exact = torch.full((4, 257), -50.0, dtype=torch.float64)
    exact[torch.arange(3), torch.tensor([9, 2, 5])] = 50.0  # a permutation of the labels
    exact[3, 256] = 50.0
    assert float(set_loss(exact, labels, 256, embeddings, 1.0, 0.05)["ot"]) < 1e-6
    wrong = exact.clone()
    wrong[0] = -50.0
    wrong[0, 7] = 50.0  # one prediction is not a label: a broken variant the term sees
    assert float(set_loss(wrong, labels, 256, embeddings, 1.0, 0.05)["ot"]) > 1e-2


def test_the_batched_loss_equals_the_per_row_definition():
    """The objective's batched terms (one Sinkhorn over padded blocks) equal :func:`set_loss` row by row."""
    b = _built()
    pairs = [(list(b"cabba"), list(b"abc")), (list(b"yyx"), list(b"xy")), (list(b"q"), list(b"q"))]
    batch = _batch(pairs)
    out = b.model.loss(batch)
    objective = b.model.objective
    own = student_forcing_inputs(b.model, batch["ids"][:, :S], 4, objective.pattern)
    with torch.no_grad():
        logits = b.model(torch.cat([batch["ids"][:, :S], own], 1), pattern=objective.pattern)[:, S - 1 :]
        embeddings = b.model.head.embed(torch.arange(257))
        rows = [set_loss(logits[i], torch.tensor(t), 256, embeddings, 1.0, 0.05) for i, (_, t) in enumerate(pairs)]
    total = sum(float(r["match"] + r["eos"] + r["ot"]) for r in rows) / sum(len(t) + 1 for _, t in pairs)
    assert abs(float(out["loss"]) - total) < 1e-9
    assert abs(float(out["ot"]) - sum(float(r["ot"]) for r in rows) / 3) < 1e-9


def test_sinkhorn_tends_to_the_assignment_cost():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(4, 4, generator=g, dtype=torch.float64)
    exact = brute_force_assignment(cost) / 4
    assert abs(float(sinkhorn_distance(cost, epsilon=0.005, iterations=2000)) - exact) < 5e-3
    assert float(sinkhorn_distance(cost, epsilon=1.0)) > exact + 1e-3  # heavy smoothing spreads the plan


def test_student_forcing_feeds_the_models_own_greedy_predictions():
    b = _built()
    source = torch.tensor([[256, 256, 97, 98, 99, 97]])
    own = student_forcing_inputs(b.model, source, 4, b.model.objective.pattern)
    ids = source
    for t in own[0].tolist():
        assert int(b.model(ids, pattern=b.model.objective.pattern)[0, -1].argmax()) == t
        ids = torch.cat([ids, torch.tensor([[t]])], 1)


def test_objective_contract_and_config_errors():
    b = _built()
    b.model.float()
    out = check_objective(b, _batch([(list(b"abca"), list(b"abc")), (list(b"zz"), list(b"z"))]))
    assert {"loss", "ot", "set_exact_match"} <= set(out)
    with pytest.raises(Exception, match="epsilon"):
        _built(epsilon=0.0)
    with pytest.raises(Exception, match="source-conditioned"):
        tiny_model(base={"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, "objective": {"name": "otseq2set"}})
