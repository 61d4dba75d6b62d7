"""genloom.toolkit.layers: the pre-norm residual block around any attention module."""

from __future__ import annotations

import torch
from torch import nn

from genloom.toolkit.layers import PreNormBlock


class _Scale(nn.Module):
    def forward(self, x, *, factor):
        return factor * x


def test_pre_norm_block_is_two_residual_branches_and_passes_keywords_to_attention():
    torch.manual_seed(0)
    block = PreNormBlock(_Scale(), d_model=8, ffn_mult=2).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    h = x + 3.0 * block.attn_norm(x)
    torch.testing.assert_close(block(x, factor=3.0), h + block.ffn(block.ffn_norm(h)))
    assert block.ffn[0].out_features == 16
