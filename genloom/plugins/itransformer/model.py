"""The iTransformer encoder: attention across variate tokens, no positional information.

The encoder itself is the registry's ``transformer`` backbone built with ``rope: false``; this
module pins what makes it an iTransformer: the tokens are variates, the pattern is ``full``
(every variate attends to every variate) and nothing depends on token order, so permuting the
variates permutes the outputs in the same way.
"""

from __future__ import annotations

import torch

from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.itransformer import ITransformerConfig


class ITransformer(Backbone):
    """Variate tokens (B, V, d_model) -> (B, V, d_model) through a position-free encoder."""

    patterns = frozenset({"full"})

    def __init__(self, encoder: torch.nn.Module, d_model: int):
        super().__init__()
        self.encoder = encoder
        self.d_model = d_model

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("itransformer encodes all variate tokens at once; it has no incremental state")
        if pattern.kind != "full":
            raise ValueError(f"itransformer attends across variates with the 'full' pattern, got '{pattern.kind}'")
        return self.encoder(h, pattern=FULL, valid=valid)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("itransformer encodes all variate tokens at once (pattern 'full'); it has no incremental state")


def encoder_node(config: ITransformerConfig) -> dict:
    """The registry node of the encoder: the config's widths, no rotary positions."""
    node = {
        "name": config.encoder,
        "d_model": config.d_model,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "dropout": config.dropout,
        "rope": False,
    }
    if config.ffn_hidden is not None:
        node["ffn_hidden"] = config.ffn_hidden
    return node


def build(config: ITransformerConfig, ctx) -> ITransformer:
    encoder = ctx.build("backbone", encoder_node(config), path=f"{ctx.current or 'backbone'}.encoder")
    ctx.set("d_model", config.d_model)
    return ITransformer(encoder, config.d_model)
