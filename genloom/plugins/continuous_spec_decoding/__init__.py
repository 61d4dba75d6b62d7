"""Continuous speculative decoding: draft-and-verify for models whose outputs are real values.

What the paper does. Speculative decoding was defined for discrete tokens; continuous-valued
autoregressive models (diffusion-head image generators such as MAR) output a density per step. The
paper carries the rule over: a draft model proposes values ``x ~ q``, the target accepts each with
probability ``min(1, p(x) / q(x))`` using the two densities, and after a rejection a value is drawn
from the normalised residual ``(p - q)+``, which it samples by acceptance-rejection because the
residual has no closed form. The output follows the target's law; the acceptance rate is
``1 - TV(p, q)``.

What this implementation does.

- The acceptance rule is the toolkit's :mod:`genloom.toolkit.acceptance` (one rule over a
  ``Density`` protocol: the discrete rule is its ``Categorical`` case); the residual of two
  Gaussian mixtures is sampled by drawing ``y ~ p`` and keeping it with probability
  ``max(0, 1 - q(y) / p(y))``.
- ``decoder.py``: :class:`ContinuousSpeculativeDecoder` decodes a sequence of real values with a
  draft and a target model, each mapping a sequence (B, T) to the next-value density after every
  position (a 1-D Gaussian mixture per position): ``gamma`` draft values, one target pass over all
  of them, block verification (first rejection ends the round with a residual draw; all accepted
  gives a bonus value from the target). :class:`MixtureAR` is a small such model (a causal window
  MLP with a mixture head).

What it simplifies. One-dimensional values and Gaussian-mixture densities instead of the paper's
diffusion head over image-token latents (whose densities the paper approximates along the
denoising trajectory); no KV cache (the toy models read a fixed window); rows of a batch are
decoded one after another. The decoder is used through ``decode(...)``; it does not run on the
discrete token loop (``genloom generate``), which it refuses with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveInt

_P = "genloom.plugins.continuous_spec_decoding"

PAPER = records.Paper(
    title="Continuous Speculative Decoding for Autoregressive Image Generation",
    year=2024,
    arxiv="2411.11925",
)


@dataclass
class ContinuousSpecConfig:
    """Speculative decoding of real-valued sequences: density-ratio acceptance, residual resampling."""

    gamma: PositiveInt = 4
    """Draft values proposed per round (the target verifies them in one pass)."""
    max_residual_tries: PositiveInt = 10_000
    """Rounds of acceptance-rejection allowed for one residual draw before it is an error."""

    def __post_init__(self):
        for name in ("gamma", "max_residual_tries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "continuous-spec-decoding",
            f"{_P}.decoder:build",
            ContinuousSpecConfig,
            "Continuous speculative decoding: accept real-valued drafts with min(1, p/q), resample from the normalised (p - q)+ residual (exact law).",
            PAPER,
        )
    ]
