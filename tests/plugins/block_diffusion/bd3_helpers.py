"""Tiny BD3-LM models assembled through the registry (baseline byte tokenizer, LM head, transformer)."""

from __future__ import annotations

import torch

from genloom.core import config as config_module
from genloom.core.model import assemble
from genloom.core.plugins import get_registry


def build(block_size: int = 4, *, d_model: int = 32, n_layers: int = 2, n_heads: int = 2, seq_len: int | None = None, objective=None, decoder=None, seed: int = 0, sharpen: bool = True):
    """A built (model, ctx, decoder) with the block-diffusion objective and decoder."""
    torch.manual_seed(seed)
    node = {
        "tokenizer": {"name": "bytes"},
        "head": {"name": "lm"},
        "backbone": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads},
        "objective": {"name": "block-diffusion", "block_size": block_size, **(objective or {})},
        "decoder": {"name": "block-diffusion", **(decoder or {})},
    }
    registry = get_registry()
    validated = config_module.validate(config_module.compose(None, base=node), registry)
    built = assemble(validated, registry, data=False)
    if seq_len is not None:
        built.ctx.set("seq_len", seq_len)
        built.model.objective.seq_len = seq_len
    if sharpen:
        sharpen_weights(built.model)
    built.model.eval()
    return built


def sharpen_weights(model) -> None:
    """Re-draw every matrix at unit fan-in scale: attention is far from uniform and positions matter,
    so tests that compare two computations can tell them apart (the 0.02 training init hides errors)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / p.shape[1] ** 0.5 if p.shape[1] > 1 else 1.0)


def random_ids(batch: int, length: int, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)
