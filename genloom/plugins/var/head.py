"""VAR's head: the transformer's input embeddings and the logits over the codebook.

Position 0 of the sequence is the start token, the embedding of the class label (index
``num_classes`` is the null class used for classifier-free guidance); positions 1.. carry latent
features (the teacher-forced or sampled f_hat of coarser scales) mapped into the model width. Every
position adds a learned absolute position embedding and the level embedding of its scale.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Head


class NextScaleHead(Head):
    def __init__(self, *, vocab_size: int, d_model: int, latent_channels: int, scales: tuple[int, ...], num_classes: int, init_std: float = 0.02):
        super().__init__()
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.scales = tuple(scales)
        lengths = [s * s for s in self.scales]
        self.seq_len = sum(lengths)
        self.class_embed = nn.Embedding(num_classes + 1, d_model)
        self.start_embed = nn.Parameter(torch.empty(1, 1, d_model))
        self.feature_embed = nn.Linear(latent_channels, d_model)
        self.position_embed = nn.Parameter(torch.empty(1, self.seq_len, d_model))
        self.level_embed = nn.Embedding(len(self.scales), d_model)
        self.output = nn.Linear(d_model, vocab_size)
        self.register_buffer("level_of_position", torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)), persistent=False)
        for p in (self.class_embed.weight, self.start_embed, self.feature_embed.weight, self.position_embed, self.level_embed.weight, self.output.weight):
            nn.init.trunc_normal_(p, std=init_std)
        nn.init.zeros_(self.feature_embed.bias)
        nn.init.zeros_(self.output.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def _place(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """Add the position and level embeddings of sequence positions [start, start + L)."""
        end = start + h.shape[1]
        if end > self.seq_len:
            raise ValueError(f"positions up to {end} exceed the {self.seq_len} of scales {self.scales}")
        return h + self.position_embed[:, start:end] + self.level_embed(self.level_of_position[start:end])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Class labels (B, n) -> start tokens (B, n, D): the only discrete input of VAR is the class.

        Each label gives the input of sequence position 0 (the query of scale 1), so
        ``model(labels[:, None])`` is the scale-1 logits of each class.
        """
        h = self.class_embed(ids) + self.start_embed
        return h + self.position_embed[:, 0] + self.level_embed.weight[0]

    def embed_sequence(self, labels: torch.Tensor | None, features: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        """Inputs of positions [start, start + n): the start token (if start == 0) then latent features (B, m, C)."""
        parts = []
        if start == 0:
            if labels is None:
                raise ValueError("position 0 is the class token: pass labels")
            parts.append(self.class_embed(labels)[:, None] + self.start_embed)
        if features is not None and features.shape[1]:
            parts.append(self.feature_embed(features))
        return self._place(torch.cat(parts, 1), start)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(h)


def build_head(config, ctx) -> NextScaleHead:
    return NextScaleHead(
        vocab_size=ctx.vocab_size,
        d_model=ctx.d_model,
        latent_channels=ctx.latent_channels,
        scales=ctx.scales,
        num_classes=int(ctx.get("num_classes", 1)),
        init_std=config.init_std,
    )
