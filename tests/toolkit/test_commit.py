"""Parallel commit rules: threshold (at least one per step), EOS early stop, classifier guidance."""

from __future__ import annotations

import torch

from genloom.toolkit.commit import fill_after_eos, guided_logits, threshold_positions

M, E = 9, 7  # mask, eos


def test_threshold_reveals_all_above_and_at_least_one():
    conf = torch.tensor([[0.2, 0.95, 0.99, 0.1], [0.3, 0.4, 0.2, 0.1], [0.9, 0.9, 0.9, 0.9]], dtype=torch.float64)
    allowed = torch.tensor([[True, True, True, True], [True, True, False, True], [False] * 4])
    chosen = threshold_positions(conf, allowed, 0.9)
    assert chosen.tolist() == [[False, True, True, False], [False, True, False, False], [False] * 4]
    # with any threshold a row with masks makes progress, so a block of n positions needs at most n steps
    assert threshold_positions(conf, allowed, 2.0).sum(-1).tolist() == [1, 1, 0]


def test_eos_fill_only_after_a_decoded_eos():
    canvas = torch.tensor([[1, 2, 3, E, M, M],   # decoded EOS: the rest is padding
                           [1, 2, M, E, M, M],   # a mask before the EOS stays a mask; after it: padding
                           [1, 2, 3, 4, M, M],   # no EOS
                           [E, 2, M, M, M, M]])  # an EOS in the prompt (before gen_start) does not count
    out, filled = fill_after_eos(canvas, 2, E, M)
    assert out.tolist() == [[1, 2, 3, E, E, E], [1, 2, M, E, E, E], [1, 2, 3, 4, M, M], [E, 2, M, M, M, M]]
    assert filled.tolist() == [2, 2, 0, 0]


def test_guidance_gamma_zero_is_unguided_and_gamma_reweights():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    clf = torch.log_softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
    torch.testing.assert_close(guided_logits(logits, clf, 0.0), torch.log_softmax(logits, -1))
    p = torch.exp(guided_logits(logits, clf, 2.0))
    expect = torch.softmax(logits, -1) * torch.exp(clf) ** 2
    torch.testing.assert_close(p, expect / expect.sum(-1, keepdim=True))
