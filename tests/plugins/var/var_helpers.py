"""Shared builders for the VAR tests: a tiny model assembled through the registry, without data."""

from __future__ import annotations

import torch

from genloom.testing import tiny_model

SCALES = (1, 2, 3, 4)
LENGTHS = tuple(s * s for s in SCALES)
L = sum(LENGTHS)


def tiny_config(**decoder) -> dict:
    """A small VAR model on 8x8 single-channel images; the tokenizer is unfitted (fit_steps 0)."""
    return {
        "seed": 0,
        "logger": "none",
        "data": {"name": "digits", "image_size": 8},
        "tokenizer": {"name": "var-vq", "scales": list(SCALES), "codebook_size": 32, "latent_channels": 8, "hidden_channels": 8, "image_shape": [1, 8, 8], "fit_steps": 0},
        "head": {"name": "next-scale"},
        "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 2, "rope": False},
        "objective": {"name": "next-scale", "cond_drop": 0.1},
        "decoder": {"name": "next-scale", **decoder},
    }


def build_tiny(seed: int = 0, **decoder):
    torch.manual_seed(seed)
    built = tiny_model(base=tiny_config(**decoder), data=False)
    built.model.eval()
    return built


def random_ids(batch: int, vocab: int, generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.randint(vocab, (batch, n), generator=generator) for n in LENGTHS]
