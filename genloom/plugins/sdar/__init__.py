"""SDAR: a synergistic diffusion-autoregression paradigm (2025, arXiv:2510.06303).

What the paper does. Instead of training a masked-diffusion model from scratch, SDAR converts a
trained autoregressive model into a block-diffusion model with a short adaptation: the sequence
is cut into blocks; attention is causal across blocks and bidirectional inside a block; each
block is a masked-diffusion model conditioned on the clean blocks before it, and the AR model's
next-token shift is kept (the prediction for position j is read at position j - 1). Generation
is autoregressive over blocks (finished blocks live in a KV cache) and parallel inside a block:
each step every masked position whose confidence clears a threshold is committed, at least one,
so a block of n tokens needs at most n steps.

What this implementation does.

- objective ``sdar`` (``objective.py``): per-block masking rates ``t_b ~ U[mask_rate_min,
  mask_rate_max]``, one vectorised pass over ``[x_t, x_0]``
  (:class:`genloom.toolkit.blocks.NoisyCleanPattern`), predictions read with the AR shift
  (:func:`genloom.toolkit.blocks.shifted_block_logits`), loss = ``sum 1[masked] / t_b * CE`` per
  scored token (the block-diffusion NELBO with the linear schedule). ``ar_run`` names a trained
  next-token run (e.g. the quickstart run); its weights are copied into the model before the first
  training step (:func:`genloom.toolkit.blocks.convert_from_ar`: same parameter names; the added mask token's embedding is the mean
  embedding, its output row zero).
- decoder ``sdar``: :class:`genloom.toolkit.blocks.BlockDecoder`: blocks left to right over a
  cache of finished blocks, parallel threshold commits inside a block.

With block size 1 the converted model's predictions are exactly the AR model's logits (every
prediction is read from a clean token under causal attention), the loss with every token masked
is the next-token NLL, and threshold decoding is greedy AR decoding: the tests check all three.

What it simplifies. Toy scale; the linear schedule only; the converted model must have the AR
model's architecture (same backbone config, one extra vocabulary row for the mask). Logits
processors are not applied inside a block. A generation finishes whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.constraints import Interval, PositiveInt
from genloom.toolkit.blocks_config import BlockDecoderConfig, BlockObjectiveConfig

PAPER = records.Paper(
    title="SDAR: A Synergistic Diffusion-AutoRegression Paradigm for Scalable Sequence Generation",
    year=2025,
    arxiv="2510.06303",
)

_P = "genloom.plugins.sdar"


@dataclass
class SDARObjectiveConfig(BlockObjectiveConfig):
    """Block diffusion on an AR-converted model, predictions read with the AR shift."""

    block_size: PositiveInt = 4
    """Tokens per block (1: the AR model's own next-token loss when every token is masked)."""
    min_rate: Annotated[float, Interval(gt=0, le=1)] = 1e-3
    """Rates are clamped to at least this (the 1/t weight stays finite)."""
    antithetic: bool = True
    """Stratify the per-block rates over the batch (same expectation, lower variance)."""
    ar_run: str | None = None
    """A trained next-token run directory (or its weights file) to convert before the first step."""

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.min_rate <= 1.0:
            raise ValueError(f"min_rate must be in (0, 1], got {self.min_rate}")


@dataclass
class SDARDecoderConfig(BlockDecoderConfig):
    """Block-by-block decoding with parallel threshold commits and a cache of finished blocks."""


@hookimpl
def genloom_objectives():
    return [records.objective("sdar", f"{_P}.objective:build", SDARObjectiveConfig,
                              "AR-to-block-diffusion conversion: shifted block-diffusion NELBO in one [x_t, x_0] pass.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("sdar", f"{_P}.decoder:build", SDARDecoderConfig,
                            "Blocks left to right, every masked token above a confidence threshold committed per step.", PAPER)]
