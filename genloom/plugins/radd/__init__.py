"""RADD: reparameterized absorbing discrete diffusion (Ou et al. 2024, arXiv:2406.03736).

What the paper does. In absorbing (masking) discrete diffusion the quantity a network must
estimate, the concrete score ``p_t(x with x^i := y) / p_t(x)``, factorises into an analytic time
scalar ``e^{-sigma_bar(t)} / (1 - e^{-sigma_bar(t)})`` times the *time-independent* conditional
distribution of clean data ``p_0(x^i = y | unmasked tokens of x_t)`` (Theorem 1). RADD therefore
drops the time input and trains a network that predicts these conditionals, with the ELBO written
as a weighted cross-entropy on masked positions (the denoising cross-entropy; its lambda form
weights by ``1/lambda``, and its any-order form is the expected negative log-likelihood of an
any-order autoregressive model). Because the network is time-free, a sampler can reuse its last
output whenever a step leaves the noisy sample unchanged, so the number of function evaluations
(NFE) is the number of *distinct* noisy states, at most the sequence length, not the step count.

What this plugin implements.

- objective ``radd``: the time-free masked-diffusion loss in three equivalent forms (``t-dce``
  with the log-linear schedule, ``lambda-dce``, ``any-order``); the network is the configured
  backbone with the ``full`` (bidirectional) attention pattern and a head, given only the noisy ids.
  The mask token id comes from ``ctx.add_special_token("mask")``.
- decoder ``radd``: the exact ancestral sampler of the reverse process over a fixed canvas of
  masked tokens after the prompt, with the caching strategy (``cache: false`` gives the same
  samples with one network call per step).
- decoder ``masked-diffusion``: the standard confidence-based masked-diffusion sampler (greedy
  max-confidence unmasking, MaskGIT/LLaDA "low-confidence remasking", optionally block by block);
  the baseline that the ``pc-sampler`` and ``prophet`` decoders are compared against.
- :func:`genloom.plugins.radd.diffusion.concrete_score`: Theorem 1 as a helper, tested against
  the definition on an enumerable distribution.

Both decoders run on the core's propose/verify/commit loop: each step proposes the canvas after
one unmasking step and commits the newly completed left prefix of the generated region, so EOS,
stop strings and the session's metrics (network calls, tokens per call, tokens/s) apply.

What it simplifies. Toy scale; only the log-linear noise schedule (the paper's choice); the
sampler is the paper's ancestral (Tweedie-equivalent for absorbing diffusion) update, not the
Euler/analytic variants of SEDD; the AO-ARM ensembling used for likelihood evaluation is not
implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genloom.core import hookimpl, records
from genloom.toolkit.canvas_config import CanvasDecoderConfig
from typing import Annotated
from genloom.core.constraints import Interval, PositiveFloat, PositiveInt

PAPER = records.Paper(
    title="Your Absorbing Discrete Diffusion Secretly Models the Conditional Distributions of Clean Data",
    year=2024,
    arxiv="2406.03736",
)

_P = "genloom.plugins.radd"


@dataclass
class RADDConfig:
    """Time-free masked-diffusion objective (RADD's denoising cross-entropy)."""

    loss_form: Literal["t-dce", "lambda-dce", "any-order"] = "lambda-dce"
    """'t-dce': t ~ U(0,1), log-linear schedule, weight sigma(t) e^-sigma_bar/(1-e^-sigma_bar) = 1/t;
    'lambda-dce': masking probability lambda ~ U(0,1), weight 1/lambda; 'any-order': mask k ~ U{1..L}
    positions, weight L/k. All three estimate the same likelihood bound."""
    sampling_eps: Annotated[float, Interval(gt=0, lt=1)] = 1e-3
    """Smallest time / masking probability drawn (keeps the 1/t weight finite)."""
    noise_eps: Annotated[float, Interval(ge=0, lt=1)] = 1e-3
    """eps of the log-linear schedule sigma_bar(t) = -log(1 - (1 - eps) t) ('t-dce' only)."""
    antithetic: bool = True
    """Spread the batch's times evenly over [0, 1) (low-discrepancy sampling, lower variance)."""

    def __post_init__(self):
        if not 0.0 < self.sampling_eps < 1.0:
            raise ValueError(f"sampling_eps must be in (0, 1), got {self.sampling_eps}")
        if not 0.0 <= self.noise_eps < 1.0:
            raise ValueError(f"noise_eps must be in [0, 1), got {self.noise_eps}")

    def bind(self, ctx):
        ctx.add_special_token("mask")


@dataclass
class RADDSamplerConfig:
    """RADD's ancestral sampler with output caching, over a canvas of max_new_tokens masked tokens."""

    steps: PositiveInt = 64
    """Reverse-process steps from t=1 to t=0 (uniform in t)."""
    cache: bool = True
    """Reuse the network's last output when a step changed nothing (the NFE saving of the paper)."""
    temperature: PositiveFloat = 1.0
    """Divide the clean-data logits by this before drawing a token (1: the model's distribution)."""
    eps: Annotated[float, Interval(gt=0, lt=1)] = 1e-5
    """Last time before 0 in the time grid."""

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def bind(self, ctx):
        ctx.add_special_token("mask")


@dataclass
class MaskedDiffusionConfig(CanvasDecoderConfig):
    """Confidence-based masked-diffusion sampler over a canvas of max_new_tokens masked tokens."""

    remasking: Literal["low_confidence", "random"] = "low_confidence"
    """Which predictions to keep each step: the most confident ones, or random ones."""


@hookimpl
def genloom_objectives():
    return [records.objective("radd", f"{_P}.objective:build", RADDConfig,
                              "Time-free absorbing diffusion: 1/t-weighted cross-entropy on masked tokens, no time input.", PAPER)]


@hookimpl
def genloom_decoders():
    return [
        records.decoder("radd", f"{_P}.decoders:build_radd", RADDSamplerConfig,
                        "Ancestral unmasking with RADD's cache: NFE = number of distinct noisy states.", PAPER),
        records.decoder("masked-diffusion", f"{_P}.decoders:build_masked_diffusion", MaskedDiffusionConfig,
                        "Confidence-based masked-diffusion unmasking (greedy max-confidence, optional blocks).", PAPER),
    ]
