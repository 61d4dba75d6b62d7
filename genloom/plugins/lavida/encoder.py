"""The toy vision encoder: pixel tokens -> patch embeddings (the prefix).

The prompt holds ``side * side`` pixel tokens (intensity levels); they are read as intensities in
[0, 1], cut into ``patch x patch`` patches, and each patch is projected linearly (with a learned
position embedding per patch) to the model width.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchEncoder(nn.Module):
    def __init__(self, side: int, patch: int, levels: int, d_model: int):
        super().__init__()
        self.side, self.patch, self.levels = side, patch, levels
        self.n_patches = (side // patch) ** 2
        self.proj = nn.Linear(patch * patch, d_model)
        self.pos = nn.Parameter(torch.zeros(self.n_patches, d_model))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, side*side) pixel tokens -> (B, n_patches, d_model)."""
        B = pixels.shape[0]
        x = pixels.reshape(B, self.side, self.side).float() / (self.levels - 1)
        g, p = self.side // self.patch, self.patch
        patches = x.reshape(B, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(B, g * g, p * p)
        return self.proj(patches.to(self.proj.weight.dtype)) + self.pos
