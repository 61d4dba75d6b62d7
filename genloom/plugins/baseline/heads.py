"""The LM head: token embedding in, logits over the vocabulary out."""

from __future__ import annotations

from genloom.toolkit.heads import TokenHead


class LmHead(TokenHead):
    """The plain language-model head (:class:`genloom.toolkit.heads.TokenHead` as it is)."""


def build_lm(config, ctx):
    return LmHead(ctx.vocab_size, ctx.d_model, config.tie_weights, config.init_std)
