"""Hyperschedules: unifying autoregressive and diffusion-based sequence generation (2025, arXiv:2504.06416).

What the paper does. A *hyperschedule* gives every token position its own noise schedule
``tau(i, t)``. Autoregression is the staircase (position i is clean exactly after step i);
MDLM/SEDD are the shared schedule (every position at the same level); everything between (e.g.
AR-Diffusion-like sloped fronts, blocks) is one family trained with one loss. Hybrid noising
processes mix absorbing (mask) and uniform (random token) noise, so a model also learns to spot
and fix wrong tokens, and an adaptive correction sampler uses it to revise already-decoded
tokens. Attention masks compatible with KV caching make training and decoding efficient.

What this implementation does.

- objective ``hyperschedules`` (``objective.py``): a schedule from :mod:`genloom.toolkit.schedules`
  (``shared``, ``staircase``, ``line``, ``block``) over the scored positions; one step ``t`` drawn
  per sequence, the corruption ``u_i < m(i, t)``, the per-position NELBO terms times T
  (:func:`genloom.toolkit.schedules.nelbo_terms`). ``epsilon`` > 0 is the hybrid process: a noised
  token becomes a uniformly drawn token instead of the mask with probability epsilon, and is
  scored like a masked one. ``attention: causal`` reads predictions with the AR shift under causal
  attention (the KV-cache-compatible mask: a clean prefix never attends to what follows);
  ``attention: full`` is the bidirectional denoiser. :meth:`exact_loss` sums every step.
- decoder ``hyperschedules`` (``decoder.py``): the reverse walk of the schedule from t = T to 0
  over a canvas of masks: a masked position is revealed between t and t - 1 with probability
  ``(m(i,t) - m(i,t-1)) / m(i,t)`` and takes the model's prediction. With causal attention and
  ``cache: true`` the fixed clean prefix stays in a KV cache and only the rest is recomputed
  (exactly the uncached logits). ``correct: true`` is the correction sampler: a decoded token
  whose model prediction is another token with probability >= ``correct_threshold`` is revised.

The tests prove: with the staircase and causal attention the exact loss equals the next-token
loss of the same (AR-converted) model, the shared schedule's loss is MDLM's, epsilon 0 is the
absorbing process, cached decoding equals uncached decoding, and staircase decoding is greedy AR
decoding.

What it simplifies. Toy scale; the hybrid process is a simplified epsilon-mixing of absorbing and
uniform noise, scored with the absorbing weights (not the paper's exact hybrid ELBO); the
correction rule is a confidence test on decoded tokens, not the paper's full sampler; committed
tokens are emitted only at the end when correction is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Unifying Autoregressive and Diffusion-Based Sequence Generation", year=2025, arxiv="2504.06416",
                      url="https://hdlm-colm.github.io/")

_P = "genloom.plugins.hyperschedules"


@dataclass
class HyperscheduleFields:
    """The schedule fields shared by the objective and the decoder."""

    schedule: Literal["shared", "staircase", "line", "block"] = "shared"
    """The hyperschedule: one level for all positions (MDLM), the AR staircase, AR-Diffusion-like lines, or blocks."""
    steps: int | None = None
    """Steps T of the schedule (None: the number of positions; the staircase needs at least that many)."""
    width: float = 4.0
    """Width of the noise front of the 'line' schedule (1: staircase-like, large: shared-like)."""
    block_size: int = 4
    """Positions per block of the 'block' schedule."""
    attention: Literal["full", "causal"] = "full"
    """'full': bidirectional denoiser; 'causal': AR shift under causal attention (KV-cache compatible)."""

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")

    def bind(self, ctx):
        ctx.add_special_token("mask")


@dataclass
class HyperschedulesObjectiveConfig(HyperscheduleFields):
    """The per-position-schedule NELBO, optionally with hybrid absorbing/uniform noise."""

    epsilon: float = 0.0
    """Hybrid noise: a noised token becomes a uniform random token (not the mask) with this probability."""
    antithetic: bool = True
    """Spread the per-sequence steps evenly over 1..T."""

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {self.epsilon}")



@dataclass
class HyperschedulesDecoderConfig(HyperscheduleFields):
    """The reverse walk of a hyperschedule, with a prefix KV cache and optional correction."""

    temperature: float = 0.0
    """0: argmax predictions; > 0: Gumbel-noised draws at this temperature."""
    cache: bool = True
    """With causal attention, keep the fixed clean prefix in a KV cache (exact)."""
    correct: bool = False
    """Revise decoded tokens the model confidently replaces (needs cache: false with causal attention)."""
    correct_threshold: float = 0.9
    """Probability the model must give another token to revise a decoded one."""

    def __post_init__(self):
        super().__post_init__()
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.correct_threshold <= 1.0:
            raise ValueError(f"correct_threshold must be in (0, 1], got {self.correct_threshold}")


@hookimpl
def genloom_objectives():
    return [records.objective("hyperschedules", f"{_P}.objective:build", HyperschedulesObjectiveConfig,
                              "Per-position noise schedules (AR staircase ... MDLM) with one NELBO; hybrid absorb/uniform noise.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("hyperschedules", f"{_P}.decoder:build", HyperschedulesDecoderConfig,
                            "Reverse walk of a hyperschedule; prefix KV cache under causal attention; optional token correction.", PAPER)]
