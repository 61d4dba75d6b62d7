"""A trained raster-order image AR target and draft over VQ tokens of the embedded digits.

Shared by the tests and measurements of the visual speculative decoders (lantern, lantern-pp,
gsd). The quantizer (``var-vq`` with one 4x4 scale, 32 codes) fits once; target and draft share it
and train for a few hundred steps on the training digits (a plain Adam loop, no Lightning).
"""

from __future__ import annotations

import functools

import torch

from genloom.testing import tiny_model

QUANTIZER = {"name": "var-vq", "scales": [4], "codebook_size": 32, "latent_channels": 8, "hidden_channels": 16, "fit_steps": 200}


def image_config(d_model: int, n_layers: int, n_heads: int = 2) -> dict:
    return {
        "data": {"name": "digits", "image_size": 8, "batch_size": 64},
        "tokenizer": {"name": "raster-vq", "quantizer": QUANTIZER, "num_classes": 10},
        "head": {"name": "lm", "tie_weights": False},
        "backbone": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads},
        "objective": {"name": "raster-next-token"},
    }


TARGET = image_config(48, 2)
DRAFT = image_config(16, 1)


def train(built, steps: int, *, lr: float = 3e-3, batch_size: int = 64, seed: int = 0):
    """A few Adam steps of the model's own objective on the training digits; returns the last loss."""
    data = built.data.load("train")
    generator = torch.Generator().manual_seed(seed)
    params = [p for n, p in built.model.named_parameters() if not n.startswith("tokenizer.")]
    optimizer = torch.optim.Adam(params, lr=lr)
    built.model.train()
    loss = None
    for _ in range(steps):
        index = torch.randint(len(data), (batch_size,), generator=generator)
        loss = built.model.loss({"image": data.images[index], "label": data.labels[index]})["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    built.model.eval()
    return float(loss.detach())


@functools.lru_cache(maxsize=None)
def trained_pair(target_steps: int = 300, draft_steps: int = 150):
    """(target Built, draft Built): the draft shares the target's fitted quantizer."""
    torch.manual_seed(0)
    target = tiny_model(base=TARGET, data=True)
    train(target, target_steps)
    torch.manual_seed(1)
    draft = _draft_sharing(target)
    train(draft, draft_steps, seed=1)
    return target, draft


def _draft_sharing(target):
    from genloom.core import config as config_mod
    from genloom.core.model import assemble
    from genloom.core.plugins import get_registry

    validated = config_mod.validate(config_mod.compose(None, None, base=DRAFT), get_registry())
    return assemble(validated, get_registry(), tokenizer=target.model.tokenizer)
