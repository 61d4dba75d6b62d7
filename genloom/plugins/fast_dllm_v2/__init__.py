"""Fast-dLLM v2: an efficient block-diffusion LLM adapted from an AR model (2025, arXiv:2509.26328).

What the paper does. A pretrained AR model is fine-tuned into a block-diffusion model (causal
across blocks, bidirectional inside a block, the AR shift kept). Training uses *complementary
masking*: every training block appears twice, once with a random mask and once with exactly the
complementary mask, so each token is predicted once per pair and every position is seen both as
context and as target. Decoding is block by block with a hierarchical cache: a *block-level* cache
of finished blocks' keys/values, and a *sub-block* cache: a block is decoded a few positions (a
sub-block) at a time and, inside a sub-block, the block's keys/values are reused instead of being
recomputed every step. Inside a sub-block, every token whose confidence clears a threshold is
committed in parallel.

What this implementation does.

- objective ``fast-dllm-v2`` (``objective.py``): per-block masking rates, the two complementary
  views of each sequence (:func:`genloom.toolkit.masking.complementary_masks`) stacked in one
  batch, one ``[x_t, x_0]`` pass with the shifted read-out
  (:func:`genloom.toolkit.blocks.shifted_block_logits`); loss = mean cross-entropy over the masked
  tokens of both views, which is each scored token exactly once. ``ar_run`` converts a trained
  next-token run first (:class:`genloom.toolkit.blocks.ConvertsFromAR`).
- decoder ``fast-dllm-v2``: :class:`genloom.toolkit.blocks.BlockDecoder` with the block-level cache
  (exact), the sub-block cache (``sub_block_size``: the block is computed once per sub-block, its
  keys/values kept; the following steps recompute only the rows that feed the sub-block) and the
  threshold commit rule (at least one token per step).

What it simplifies. Toy scale. The loss is the plain mean masked-token cross-entropy (the paper's
training loss), not the 1/t-weighted NELBO. The sub-block cache is an approximation between its
refreshes, as in the paper: exact at each sub-block's first step, and exactly the uncached
decoder when ``sub_block_size`` equals the block size; the figure on the catalogue page measures
its agreement. No batched-request scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, PositiveInt, Probability
from genloom.toolkit.blocks_config import BlockObjectiveConfig

PAPER = records.Paper(title="Fast-dLLM v2: Efficient Block-Diffusion LLM", year=2025, arxiv="2509.26328")

_P = "genloom.plugins.fast_dllm_v2"


@dataclass
class FastDLLMv2ObjectiveConfig(BlockObjectiveConfig):
    """Block diffusion with complementary masking on an AR-converted model."""

    mask_rate_min: Probability = 0.0
    """Lower end of the per-block masking rate of the first view (the second view masks the rest)."""
    mask_rate_max: Probability = 1.0
    """Upper end of the per-block masking rate of the first view."""
    ar_run: str | None = None
    """A trained next-token run directory to convert before the first step (same backbone and tokenizer)."""


@dataclass
class FastDLLMv2DecoderConfig:
    """Block decoding with the block-level and sub-block caches and parallel threshold commits."""

    block_size: PositiveInt | None = None
    """Tokens per block (None: the objective's block_size)."""
    sub_block_size: PositiveInt | None = None
    """Positions decoded per sub-block with the block's keys/values reused (None: the whole block,
    recomputed every step; exact)."""
    threshold: Probability = 0.9
    """Commit every masked position of the sub-block whose confidence is >= threshold (at least one per step)."""
    temperature: NonNegativeFloat = 0.0
    """0: argmax predictions; > 0: Gumbel-noised draws at this temperature."""
    cache: bool = True
    """Keep finished blocks' keys/values (False: recompute the whole context every step; needs sub_block_size None)."""

    def __post_init__(self):
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")
        if self.sub_block_size is not None and self.sub_block_size < 1:
            raise ValueError(f"sub_block_size must be at least 1, got {self.sub_block_size}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.sub_block_size is not None and not self.cache:
            raise ValueError("sub_block_size needs cache: true (the sub-block cache lives in the block cache)")

    def bind(self, ctx):
        ctx.add_special_token("mask")
        if self.block_size is None:
            self.block_size = ctx.get("block_size")


@hookimpl
def genloom_objectives():
    return [records.objective("fast-dllm-v2", f"{_P}.objective:build", FastDLLMv2ObjectiveConfig,
                              "Block diffusion from an AR model trained with complementary masks (each token scored once per pair).", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("fast-dllm-v2", f"{_P}.decoder:build", FastDLLMv2DecoderConfig,
                            "Block decoding with a block-level and a sub-block KV cache and parallel threshold commits.", PAPER)]
