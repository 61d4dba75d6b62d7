"""The ``embedding-diffusion`` head: builds the toolkit's :class:`EmbeddingDiffusionHead` from the context."""

from __future__ import annotations

from genloom.toolkit.embedding_diffusion import EmbeddingDiffusionHead, schedule_of


def build(config, ctx):
    return EmbeddingDiffusionHead(ctx.vocab_size, ctx.d_model, config.embed_dim, schedule_of(ctx).steps, config.init_std)
