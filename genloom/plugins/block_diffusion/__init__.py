"""Block diffusion (BD3-LM): interpolating between autoregressive and masked-diffusion language models.

What the paper does (Arriola et al., 2025, arXiv:2503.09573). A sequence is cut into blocks of
``L'`` tokens. Blocks are generated left to right (autoregressive over blocks: ``log p(x) =
sum_b log p(x^b | x^{<b})``), and each block conditional is a masked (absorbing-state) discrete
diffusion model, trained with the block diffusion NELBO and sampled by iterative unmasking
while the clean blocks before it sit in a KV cache. Training is vectorised: one forward pass over
the concatenation ``[x_t, x_0]`` (length 2L) with a mask in which noisy block b sees itself
(bidirectional) and clean blocks < b, and clean block b sees clean blocks <= b. With ``L' = 1`` the
NELBO equals the autoregressive NLL in expectation, and exactly when every token is masked
(``t = 1``), which is the paper's tuned schedule for ``L' = 1`` that closes the gap to AR.
The paper further reduces gradient variance with clipped ("data-driven") schedules
``t ~ U[beta, omega]`` tuned per block size.

What this implementation does.

- ``BlockDiffusionPattern`` (``pattern.py``): the 2L training mask as an ``AttentionPattern``
  subclass defined by ``allowed(q_pos, kv_pos)`` (a FlexAttention ``mask_mod``; the reference kernel
  builds the dense mask from it); ``positions(index) = index mod L`` so both copies of a token share
  their positional encoding.
- Objective ``block-diffusion`` (``objective.py``): per-block times ``t_b`` (optionally stratified,
  optionally clipped to ``[mask_rate_min, mask_rate_max]``), linear schedule ``alpha(t) = 1 - t``,
  SUBS parameterisation, loss = NELBO per token = mean over tokens of ``1/t_b * CE`` on masked
  tokens. The mask token comes from ``ctx.add_special_token("mask")`` in ``bind``.
- Decoder ``block-diffusion`` (``decoder.py``): one block per propose step, iterative unmasking
  (``steps`` ancestral steps, logits reused when a step reveals nothing) against the KV cache of the
  committed clean blocks; the block is committed through the core loop, so length is arbitrary
  (``max_new_tokens``) and stop tokens, processors and metrics work as for every decoder. The
  finished block's keys/values enter the cache during the next block's first denoiser pass.

Simplifications at toy scale: the linear schedule only (the paper also studies others); the clipped
range is a config value, not searched by the paper's variance-minimising grid search; no
nucleus-sampling default (use the core's processors); a generation always finishes whole blocks
and the session keeps the first ``max_new_tokens`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from typing import Annotated
from genloom.core.constraints import Interval, PositiveInt, Probability

PAPER = records.Paper(
    title="Block Diffusion: Interpolating Between Autoregressive and Diffusion Language Models",
    year=2025,
    arxiv="2503.09573",
    url="https://m-arriola.com/bd3lms/",
)


@dataclass
class BlockDiffusionObjectiveConfig:
    """BD3-LM training objective."""

    block_size: PositiveInt = 4
    """Tokens per block L' (1 = autoregressive, seq_len = plain masked diffusion)."""
    mask_rate_min: Probability = 0.0
    """Lower end beta of the per-block masking rate t ~ U(beta, omega) (the paper's clipped schedule)."""
    mask_rate_max: Probability = 1.0
    """Upper end omega of the per-block masking rate; beta = omega = 1 with block_size 1 gives the AR loss exactly."""
    antithetic: bool = True
    """Stratify the per-block times across the batch (low-discrepancy sampler; same expectation, lower variance)."""
    min_time: Annotated[float, Interval(gt=0, lt=1)] = 1e-3
    """Times are clamped to at least this (the 1/t weight stays finite)."""

    def __post_init__(self):
        if self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")
        if not 0.0 <= self.mask_rate_min <= self.mask_rate_max <= 1.0:
            raise ValueError(f"need 0 <= mask_rate_min <= mask_rate_max <= 1, got mask_rate_min={self.mask_rate_min}, mask_rate_max={self.mask_rate_max}")
        if not 0.0 < self.min_time <= 1.0:
            raise ValueError(f"min_time must be in (0, 1], got {self.min_time}")

    def bind(self, ctx):
        ctx.add_special_token("mask")
        ctx.set("block_size", self.block_size)


@dataclass
class BlockDiffusionDecoderConfig:
    """BD3-LM block-by-block sampler."""

    block_size: PositiveInt | None = None
    """Tokens per block; None takes the objective's block_size from the build context."""
    steps: PositiveInt | None = None
    """Denoising steps per block; None means one per position of the block."""
    greedy: bool = False
    """Take the argmax token when a position is revealed instead of sampling."""
    cache: bool = True
    """Keep the clean blocks in the backbone's KV cache (False: recompute the whole context at every step)."""

    def __post_init__(self):
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")

    def bind(self, ctx):
        ctx.add_special_token("mask")  # the same id as the objective's, if it reserved one
        if self.block_size is None:
            self.block_size = ctx.get("block_size")


@hookimpl
def genloom_objectives():
    return [
        records.objective(
            name="block-diffusion",
            factory="genloom.plugins.block_diffusion.objective:build",
            config=BlockDiffusionObjectiveConfig,
            summary="BD3-LM: per-block masked diffusion NELBO in one pass over the noisy and clean copies (x_t, x_0)",
            paper=PAPER,
        )
    ]


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            name="block-diffusion",
            factory="genloom.plugins.block_diffusion.decoder:build",
            config=BlockDiffusionDecoderConfig,
            summary="BD3-LM: block-by-block iterative unmasking over a KV cache of clean blocks",
            paper=PAPER,
        )
    ]
