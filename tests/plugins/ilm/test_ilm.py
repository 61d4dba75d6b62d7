"""ILM: the joint over (slot, token) insertions plus stop sums to 1; the training target puts mass
on each slot in proportion to its missing tokens; repeated single insertions keep every infill
constraint, in order, and produce variable-length outputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from genloom.core.data import SourceTargetPairs
from genloom.core.generation import Generator
from genloom.plugins.ilm.head import joint_log_probs
from genloom.plugins.ilm.objective import insertion_target, split
from genloom.testing import check_decoder, check_objective, tiny_model
from genloom.toolkit import anyorder
from genloom.toolkit.anyorder import gap_counts

V = 6


def _model(data=True, decoder=None, seed=0):
    base = {
        "tokenizer": {"name": "ids", "vocab_size": V, "eos_id": 0},
        "head": {"name": "ilm"},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "ilm"},
    }
    if data:
        base["data"] = {"name": "seq2seq", "source_length": 3, "target_length": 6}
    if decoder:
        base["decoder"] = decoder
    b = tiny_model(base=base, seed=seed)
    b.model.double().eval()
    return b


def test_the_joint_over_insertions_and_stop_sums_to_one():
    b = _model()
    prefix = torch.tensor([[1, 2, 3], [0, 4, 5]])
    canvases = [[4, 5], []]
    log_p = joint_log_probs(b.model, prefix, canvases, 0)
    assert log_p.shape == (2, 3 * V + 1)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(2, dtype=torch.float64), atol=1e-12)
    p = log_p[:, :-1].exp().view(2, 3, V)
    p = p.detach()
    assert float(p[1, 1:].sum()) == 0  # slots past an empty canvas's end
    assert float(p[..., 0].sum()) == 0  # the end-of-sequence id is never inserted (stop replaces it)
    # padding does not change a row: the row alone gives the same distribution
    alone = joint_log_probs(b.model, prefix[1:], [[]], 0)
    assert torch.allclose(alone[0, :V], log_p[1, :V], atol=1e-10) and torch.allclose(alone[0, -1], log_p[1, -1], atol=1e-10)


def test_target_mass_per_slot_is_proportional_to_its_missing_tokens():
    target = [1, 2, 3, 4, 5, 1]
    for keep in itertools.product([False, True], repeat=len(target)):
        q = insertion_target(target, list(keep), slots=len(target) + 1, vocab_size=V)
        assert abs(float(q.sum()) - 1) < 1e-12
        counts = gap_counts(torch.tensor(keep)).double()
        missing = float(counts.sum())
        if missing == 0:
            assert float(q[-1]) == 1
            continue
        per_slot = q[:-1].view(-1, V).sum(1)[: len(counts)]
        assert torch.allclose(per_slot, counts / missing) and float(q[-1]) == 0
    # a broken variant, one unit of mass per non-empty slot, differs on unequal gaps
    keep = [True, False, False, False, True, False]
    counts = gap_counts(torch.tensor(keep)).double()
    uniform = (counts > 0).double() / float((counts > 0).sum())
    assert not torch.allclose(uniform, counts / counts.sum())


def test_the_objective_scores_the_target_of_its_deletions():
    b = _model()
    pairs = SourceTargetPairs([([1, 2], [3, 4, 5]), ([4], [])], 3, 6, pad_id=0, eos_id=0)
    batch = torch.utils.data.default_collate([pairs[i] for i in range(2)])
    prefix, targets = split(batch, 3)
    assert prefix.tolist() == [[0, 1, 2], [0, 0, 4]] and targets == [[3, 4, 5], []]
    torch.manual_seed(0)
    out = b.model.loss(batch)
    # recompute with the same draws: the loss is the cross-entropy against insertion_target
    torch.manual_seed(0)
    rates = torch.rand(2).tolist()
    keeps = [(torch.rand(len(t)) >= r).tolist() for t, r in zip(targets, rates)]
    canvases = [[v for v, k in zip(t, keep) if k] for t, keep in zip(targets, keeps)]
    log_p = joint_log_probs(b.model, prefix, canvases, 0)
    slots = (log_p.shape[1] - 1) // V
    expected = -sum(float((insertion_target(t, k, slots, V) * log_p[i].masked_fill(insertion_target(t, k, slots, V) == 0, 0)).sum()) for i, (t, k) in enumerate(zip(targets, keeps))) / 2
    assert abs(float(out["loss"]) - expected) < 1e-10
    b.model.train()
    check_objective(b, batch)


def test_repeated_insertions_keep_every_constraint_in_order():
    """Sampling from an untrained model: outputs of several lengths, each containing the target
    prefix given as constraints as a subsequence; one forward pass per insertion plus the stop."""
    b = _model(decoder={"name": "ilm"})
    with torch.no_grad():
        b.model.head.stop_head.bias.fill_(3.0)  # stop about as likely as any insertion, so lengths vary
    gen = Generator(b)
    constraints = [[4, 5], [3], []]
    result = gen.generate(prompt_ids=[[1, 2, 3] + c for c in constraints], max_new_tokens=6, seed=0)
    lengths = set()
    for out, c in zip(result.ids, constraints):
        body = out[:-1] if out[-1] == 0 else out  # a canvas stopped by max_new_tokens has no end-of-sequence id
        assert 0 not in body and len(body) <= 6
        it = iter(body)
        assert all(t in it for t in c), f"{c} is not a subsequence of {body}"
        lengths.add(len(body))
    assert len(lengths) > 1
    assert result.metrics.forward_passes["target"] <= 6


def test_a_canvas_that_overwrites_instead_of_inserting_loses_constraints(monkeypatch):
    """Broken variant: an insertion that replaces the token after its slot drops constraints."""
    def overwrite(self, b, insertions):
        row = self.tokens[b]
        for s, ids in insertions.items():
            row[s : s + len(ids)] = ids
    monkeypatch.setattr(anyorder.InsertionCanvas, "insert", overwrite)
    b = _model(decoder={"name": "ilm", "greedy": False})
    result = Generator(b).generate(prompt_ids=[[1, 2, 3, 4, 5]] * 8, max_new_tokens=6, seed=0)
    def keeps(body):
        it = iter(body)
        return all(t in it for t in [4, 5])
    assert not all(keeps([t for t in out if t != 0]) for out in result.ids)


def test_decoder_contract_and_errors():
    b = _model(data=False, decoder={"name": "ilm"})
    check_decoder(b, {"name": "ilm"}, prompts=((1, 2, 3), (4, 5)), max_new_tokens=4)
    with pytest.raises(Exception, match="prefix"):
        Generator(_model(decoder={"name": "ilm"})).generate(prompt_ids=[[1, 2]], max_new_tokens=3)
