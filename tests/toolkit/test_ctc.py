"""CTC: torch's loss equals the log-sum over every alignment; collapse decoding."""

from __future__ import annotations

import pytest
import torch

from genloom.toolkit.ctc import collapse, ctc_loss, ctc_nll_by_enumeration, greedy_decode, upsampled_length


def test_collapse_merges_repeats_then_drops_blanks():
    assert collapse([0, 1, 1, 0, 1, 2, 2, 0], blank=0) == [1, 1, 2]
    assert collapse([1, 1, 1], blank=0) == [1]
    assert collapse([0, 0], blank=0) == []
    assert collapse(torch.tensor([3, 0, 3]), blank=0) == [3, 3]


@pytest.mark.parametrize("target", [[1], [1, 2], [2, 2], [1, 2, 1], []])
def test_torch_ctc_loss_equals_the_sum_over_all_alignments(target):
    """Vocabulary of 3 (blank 0), 5 positions: all 243 alignments enumerated, float64, 1e-6."""
    torch.manual_seed(len(target))
    L, V = 5, 3
    log_probs = torch.randn(2, L, V, dtype=torch.float64).log_softmax(-1)
    padded = torch.tensor([target + [1] * (3 - len(target))] * 2)
    loss = ctc_loss(log_probs, padded, L, len(target), blank=0)
    for b in range(2):
        expected = ctc_nll_by_enumeration(log_probs[b], target, blank=0)
        assert abs(float(loss[b]) - float(expected)) < 1e-6
    if not target:
        return
    # a broken variant: without the merging of repeats the sum counts other alignments
    wrong = -torch.logsumexp(torch.stack([log_probs[0, torch.arange(L), torch.tensor(p)].sum() for p in __import__("itertools").product(range(V), repeat=L) if [t for t in p if t != 0] == target]), 0)
    assert abs(float(wrong) - float(loss[0])) > 1e-3


def test_a_target_that_cannot_fit_has_infinite_loss():
    log_probs = torch.randn(1, 2, 3, dtype=torch.float64).log_softmax(-1)
    assert torch.isinf(ctc_loss(log_probs, torch.tensor([[1, 1]]), 2, 2, blank=0)).all()  # needs a blank between
    assert torch.isinf(ctc_nll_by_enumeration(log_probs[0], [1, 1], blank=0))


def test_gradient_of_the_loss_and_greedy_decoding():
    logits = torch.full((1, 6, 4), -5.0)
    for t, i in enumerate([2, 2, 0, 2, 3, 0]):
        logits[0, t, i] = 5.0
    assert greedy_decode(logits, blank=0) == [[2, 2, 3]]
    assert greedy_decode(logits, blank=0, lengths=[2]) == [[2]]
    x = torch.randn(1, 6, 4, requires_grad=True)
    ctc_loss(x.log_softmax(-1), torch.tensor([[2, 3]]), 6, 2, blank=0).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert upsampled_length(7, 2.0) == 14 and upsampled_length(0, 2.0) == 1
