"""Copy a trained next-token model's weights into a block-diffusion model of the same architecture.

Parameters are matched by name. The diffusion model's vocabulary has the AR model's tokens plus
the mask token (and any other added specials): those extra rows get the mean of the AR
embedding rows (input side) and zeros (output side); every other parameter must have the same
shape, or the conversion stops with an error naming it.
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError


@torch.no_grad()
def convert_from_ar(model, ar_model) -> int:
    """Copy ``ar_model``'s parameters into ``model``; returns the number of tensors copied."""
    source = ar_model.state_dict()
    copied = 0
    for name, target in model.state_dict().items():
        if name.startswith("objective."):
            continue
        if name not in source:
            raise ConfigError(f"the AR model has no parameter '{name}': it must have the same backbone and head as this model", path="objective.ar_run")
        src = source[name].to(target.dtype)
        if src.shape == target.shape:
            target.copy_(src)
        elif src.dim() == target.dim() and src.shape[1:] == target.shape[1:] and src.shape[0] < target.shape[0]:
            n = src.shape[0]
            target[:n].copy_(src)
            target[n:] = src.mean(0, keepdim=True) if "embed" in name else 0.0
        else:
            raise ConfigError(f"parameter '{name}' has shape {tuple(src.shape)} in the AR model but {tuple(target.shape)} here", path="objective.ar_run")
        copied += 1
    return copied
