"""NBDiff: from next-token to next-block, a principled adaptation path for diffusion LLMs (2025, arXiv:2512.06776).

What the paper does. An AR model is adapted into a block-diffusion model by treating AR as block
diffusion with block size 1 and growing the block size step by step. The attention is
*context-causal*: the context (prompt and committed blocks) stays strictly causal, as in the AR
model, and only the active block is bidirectional. Training is parallel: one pass over the noisy
sequence followed by the clean one, the clean half causal, each noisy block attending to itself
and to the clean tokens before it; predictions keep the AR shift; an auxiliary AR loss on the
clean half uses every token for next-token prediction.

What this implementation does.

- objective ``nbdiff`` (``objective.py``): per-block rates, one pass with
  :class:`genloom.toolkit.blocks.ContextCausalPattern`, shifted read-out, the 1/t-weighted masked
  loss plus ``ar_weight`` times the next-token loss read from the clean half; the block size follows
  ``block_sizes`` / ``growth_steps`` over training steps (counted in a saved buffer); ``ar_run``
  converts a trained next-token run first.
- decoder ``nbdiff``: :class:`genloom.toolkit.blocks.BlockDecoder` with a causal context: a finished
  block is appended to the KV cache in a causal pass of its own, the active block is decoded
  bidirectionally against it with threshold commits.

With block size 1 the pattern's clean half is the causal mask, every prediction comes from a
causal clean row, and the loss with every token masked is the next-token loss; the auxiliary loss
is the next-token loss at every block size (tested).

What it simplifies. Toy scale; linear schedule; the growth schedule is a step function over
training steps; logits processors are not applied inside a block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.constraints import Interval, NonNegativeFloat, NonNegativeInt, PositiveInt, Probability
from genloom.toolkit.blocks_config import BlockDecoderConfig

PAPER = records.Paper(title="From Next-Token to Next-Block: A Principled Adaptation Path for Diffusion LLMs", year=2025, arxiv="2512.06776")

_P = "genloom.plugins.nbdiff"


@dataclass
class NBDiffObjectiveConfig:
    """Context-causal block diffusion with an auxiliary AR loss and a growing block size."""

    block_sizes: tuple[PositiveInt, ...] = (1, 2, 4)
    """Block sizes used in turn during training (the last one is the target, published to the decoder)."""
    growth_steps: tuple[NonNegativeInt, ...] = (200, 400)
    """Training steps at which the block size moves to the next entry (one fewer than block_sizes)."""
    ar_weight: NonNegativeFloat = 1.0
    """Weight of the auxiliary next-token loss on the clean half."""
    mask_rate_min: Probability = 0.0
    """Lower end of the per-block masking rate."""
    mask_rate_max: Probability = 1.0
    """Upper end of the per-block masking rate."""
    min_rate: Annotated[float, Interval(gt=0, le=1)] = 1e-3
    """Rates are clamped to at least this (finite 1/t)."""
    ar_run: str | None = None
    """A trained next-token run directory to convert before the first step."""

    def __post_init__(self):
        self.block_sizes = tuple(self.block_sizes)
        self.growth_steps = tuple(self.growth_steps)
        if not self.block_sizes or any(b < 1 for b in self.block_sizes):
            raise ValueError(f"block_sizes must be a non-empty list of sizes >= 1, got {self.block_sizes}")
        if len(self.growth_steps) != len(self.block_sizes) - 1 or list(self.growth_steps) != sorted(self.growth_steps):
            raise ValueError(f"growth_steps needs one increasing step per block-size change ({len(self.block_sizes) - 1}), got {self.growth_steps}")
        if self.ar_weight < 0:
            raise ValueError(f"ar_weight must be >= 0, got {self.ar_weight}")
        if not 0.0 <= self.mask_rate_min <= self.mask_rate_max <= 1.0:
            raise ValueError(f"need 0 <= mask_rate_min <= mask_rate_max <= 1, got mask_rate_min={self.mask_rate_min}, mask_rate_max={self.mask_rate_max}")

    def bind(self, ctx):
        ctx.add_special_token("mask")
        ctx.set("block_size", self.block_sizes[-1])


@dataclass
class NBDiffDecoderConfig(BlockDecoderConfig):
    """Context-causal block decoding with threshold commits (the toolkit's block decoder config:
    ``block_size``, ``threshold``, ``temperature``, ``cache`` -- here the causal context's keys/values)."""


@hookimpl
def genloom_objectives():
    return [records.objective("nbdiff", f"{_P}.objective:build", NBDiffObjectiveConfig,
                              "AR-to-block adaptation: context-causal mask, auxiliary AR loss, growing block size.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("nbdiff", f"{_P}.decoder:build", NBDiffDecoderConfig,
                            "Blocks over a causal context cache, bidirectional inside the active block, threshold commits.", PAPER)]
