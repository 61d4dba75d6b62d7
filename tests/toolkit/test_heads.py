"""genloom.toolkit.heads: the token head shared by the language-model head and the insertion and any-order heads."""

from __future__ import annotations

import torch

from genloom.toolkit.heads import TokenHead, scalar_readout


def test_tied_head_projects_with_its_embedding_and_untied_does_not():
    torch.manual_seed(0)
    tied, untied = TokenHead(11, 8, tie_weights=True), TokenHead(11, 8, tie_weights=False)
    h = torch.randn(2, 3, 8)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    torch.testing.assert_close(tied(h), h @ tied.embed_tokens.weight.T)
    assert untied.lm_head.weight is not untied.embed_tokens.weight
    assert not torch.allclose(untied(h), h @ untied.embed_tokens.weight.T)
    ids = torch.tensor([[1, 2, 10]])
    torch.testing.assert_close(tied.embed(ids), tied.embed_tokens.weight[ids])
    assert tied.vocab_size == 11 and tied.tied and not untied.tied


def test_scalar_readout_starts_with_zero_bias_and_small_weights():
    torch.manual_seed(0)
    layer = scalar_readout(64, init_std=0.02)
    assert layer.bias.item() == 0 and layer.weight.shape == (1, 64)
    assert 0.01 < layer.weight.std().item() < 0.03
