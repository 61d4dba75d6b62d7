"""Draft-model decoding: loading a frozen draft model beside the target.

Shared by the decoders that draft with a second model (speculative sampling, SpecTr, ...). The
config fields (``draft``, ``gamma``, ``seed``) are :class:`genloom.toolkit.draft_config.DraftModelConfig`.
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError
from genloom.core.generation import Decoder, load_model
from genloom.toolkit.draft_config import DraftModelConfig

__all__ = ["DraftModelConfig", "DraftModelDecoder", "load_draft", "load_guide"]


def load_draft(draft, ctx, seed: int = 0, path: str = "decoder.draft"):
    """The frozen draft model of a draft-model decoder (speculative, SpecTr, ...).

    ``draft`` is a run directory, a weights file in one, a config ``.yaml`` or a nested model config
    dict; its vocabulary must equal the target's (``ctx.vocab_size``).
    """
    if draft is None:
        raise ConfigError("a draft model is required: a run directory, a weights file in one, a config .yaml, or a nested model config {tokenizer, head, backbone, ...}", path=path)
    try:
        model = load_model(draft if isinstance(draft, str) else dict(draft), seed=seed, expect_vocab_size=ctx.get("vocab_size"), registry=ctx.registry)
    except ConfigError as exc:
        raise ConfigError(str(exc).removeprefix("config error: "), path=path) from exc
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_guide(source, ctx, seed: int = 0, path: str = "decoder.guide"):
    """A frozen second model that scores or guides a diffusion decoder (an AR guide, an energy model).

    Like :func:`load_draft` but its vocabulary may lack the diffusion model's added special tokens
    (the mask): it must not be larger than ``ctx.vocab_size``.
    """
    if source is None:
        raise ConfigError("a guide model is required: a run directory, a weights file in one, a config .yaml, or a nested model config", path=path)
    try:
        model = load_model(source if isinstance(source, str) else dict(source), seed=seed, registry=ctx.registry if ctx is not None else None)
    except ConfigError as exc:
        raise ConfigError(str(exc).removeprefix("config error: "), path=path) from exc
    if ctx is not None and ctx.get("vocab_size") is not None and model.ctx.vocab_size > ctx.get("vocab_size"):
        raise ConfigError(f"the guide has {model.ctx.vocab_size} tokens but the model only {ctx.get('vocab_size')}: they must share the tokenizer", path=path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class DraftModelDecoder(Decoder):
    """Base of decoders that draft with a second model (config fields ``draft`` and ``seed``).

    A draft given as a nested config is built at once; one named by a path is loaded on first use,
    so a config can name a draft run that is trained after the target (``genloom train`` builds
    the decoder before training).
    """

    def __init__(self, config, ctx=None, draft=None):
        super().__init__(config, ctx)
        self._draft = draft
        if draft is None:
            if config.draft is None:
                load_draft(None, ctx, config.seed)  # raises: the config must name a draft
            if not isinstance(config.draft, str):
                self._draft = load_draft(config.draft, ctx, config.seed)

    @property
    def draft(self):
        if self._draft is None:
            self._draft = load_draft(self.config.draft, self.ctx, self.config.seed)
        return self._draft

    def _probs(self, session, logits: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """Processed logits -> float64 probabilities (the distribution the session would sample from)."""
        processed = session.process(logits, history) if session.processors else logits
        return torch.softmax(processed.double(), dim=-1)

    def _history(self, session, extra: torch.Tensor) -> torch.Tensor | None:
        """The processors' history with ``extra`` drafted tokens appended (None without processors);
        the committed history is ``session.scratch["history"]``, taken when the round's drafting starts."""
        if not session.processors:
            return None
        base = session.scratch["history"]
        return torch.cat([base, extra], dim=1) if extra.shape[1] else base
