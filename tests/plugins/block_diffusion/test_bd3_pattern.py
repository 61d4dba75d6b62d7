"""The BD3-LM training mask over [x_t, x_0]: its structure, and kernels serving it identically."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bd3_helpers import build, random_ids  # noqa: E402

from genloom.core import kernels  # noqa: E402
from genloom.plugins.block_diffusion.pattern import BlockDiffusionPattern  # noqa: E402


def expected_mask(L: int, block_size: int) -> torch.Tensor:
    """The paper's Fig. 2 mask, built from its three named parts with plain block matrices."""
    nb = -(-L // block_size)
    blocks = torch.arange(L) // block_size
    same = (blocks[:, None] == blocks[None, :])  # M_BD: block diagonal
    earlier = (blocks[None, :] < blocks[:, None])  # M_OBC: offset block-causal
    upto = (blocks[None, :] <= blocks[:, None])  # M_BC: block-causal
    top = torch.cat([same, earlier], dim=1)
    bottom = torch.cat([torch.zeros(L, L, dtype=torch.bool), upto], dim=1)
    assert nb >= 1
    return torch.cat([top, bottom], dim=0)


@pytest.mark.parametrize("L,block_size", [(8, 2), (8, 1), (8, 8), (10, 4)])
def test_mask_is_the_papers_three_part_mask(L, block_size):
    pattern = BlockDiffusionPattern(seq_len=L, block_size=block_size)
    assert torch.equal(pattern.dense(2 * L), expected_mask(L, block_size))


def test_hand_checked_example():
    # L = 4, L' = 2: noisy rows 0-3, clean rows 4-7
    dense = BlockDiffusionPattern(seq_len=4, block_size=2).dense(8).int()
    assert dense.tolist() == [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]


def test_positions_share_noisy_and_clean_copies():
    pattern = BlockDiffusionPattern(seq_len=6, block_size=3)
    assert pattern.positions(torch.arange(12)).tolist() == list(range(6)) * 2
    assert not pattern.is_causal


@pytest.mark.parametrize("bad", [dict(seq_len=4, block_size=0), dict(seq_len=0, block_size=2)])
def test_pattern_validation(bad):
    with pytest.raises(ValueError):
        BlockDiffusionPattern(**bad)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_and_reference_kernels_agree_on_the_pattern():
    torch.manual_seed(0)
    L, bs = 8, 2
    pattern = BlockDiffusionPattern(seq_len=L, block_size=bs)
    q, k, v = (torch.randn(2, 2, 2 * L, 8) for _ in range(3))
    with kernels.use("attention", "reference") as ref:
        expected = ref(q, k, v, pattern=pattern)
    with kernels.use("attention", "flex") as flex:
        got = flex(q, k, v, pattern=pattern)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # and the dense-mask attention really differs from plain full attention
    with kernels.use("attention", "reference") as ref:
        full = ref(q, k, v, pattern=BlockDiffusionPattern(seq_len=L, block_size=2 * L))
    assert (full - expected).abs().max() > 1e-2


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_whole_model_pass_identical_under_flex_and_reference():
    built = build(4)
    model, objective = built.model, built.model.objective
    x0 = random_ids(2, 8, seed=1)
    x_t, _, _ = objective.corrupt(x0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with kernels.use("attention", "reference"):
            ref = objective.noisy_logits(model, x_t, x0)
        with kernels.use("attention", "flex"):
            flex = objective.noisy_logits(model, x_t, x0)
    torch.testing.assert_close(flex, ref, atol=1e-5, rtol=1e-5)
