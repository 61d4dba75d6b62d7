"""EDLM: energy-based diffusion language models (2024, arXiv:2410.21357).

What the paper does. A masked diffusion model denoises all masked positions independently given
the noisy sequence, which is a poor approximation of the true joint when many tokens are decoded
per step. EDLM corrects each denoising step with a sequence-level energy in residual form:
``p(x0 | xt) ∝ q_theta(x0 | xt) exp(-E(x0))``. With a pretrained AR model the energy is
``E(x0) = log q_theta(x0 | xt) - log p_AR(x0)``, so the corrected step targets the AR model's
distribution. Sampling uses parallel importance sampling: draw k full candidates from the
diffusion proposal q_theta in parallel, weight each by ``exp(-E)`` (= p_AR / q_theta), resample
one, and take the usual reverse step with it; the paper applies it to the early, most parallel
steps.

What this implementation does. Decoder ``edlm`` (``decoder.py``): RADD's ancestral sampler (the
same random draws: the reveal coins, then the Gumbel noise of the first candidate) over a canvas
of masks; during the first ``importance_steps`` steps it draws ``candidates`` candidates for the
masked positions, scores each with the AR model (``energy_model``; one causal pass over the
k candidates) and the proposal's own log-probability, and resamples one with weights
``exp(-E) = p_AR(x0) / q(x0)`` (``importance.py``: :func:`resample`). ``energy: none`` (E = 0)
resamples uniformly: the law of the step is the base sampler's exactly; with one candidate the
tokens are the ``radd`` decoder's, token for token.

What it simplifies. Toy scale; only the AR-model energy (the paper also trains an NCE energy); the
AR log-probability is of the whole candidate (prompt-conditioned), one causal pass per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Energy-Based Diffusion Language Models for Text Generation", year=2024, arxiv="2410.21357")


@dataclass
class EDLMConfig:
    """Ancestral masked-diffusion sampling with parallel importance sampling under an AR energy."""

    steps: int = 16
    """Reverse-process steps from t = 1 to 0."""
    candidates: int = 8
    """k: candidates drawn from the diffusion proposal per importance-sampled step."""
    importance_steps: int | None = None
    """Importance-sample the first this many steps (None: all of them)."""
    energy: Literal["ar", "none"] = "ar"
    """'ar': E = log q - log p_AR (needs energy_model); 'none': E = 0 (uniform resampling)."""
    energy_model: str | dict[str, Any] | None = None
    """The AR model: a run directory, weights file, config .yaml or nested config (vocabulary without the mask)."""
    energy_seed: int = 0
    """Seed for the weights of an energy model built from a nested config."""
    temperature: float = 1.0
    """Divide the clean-data logits by this before drawing candidates."""
    eps: float = 1e-5
    """Last time before 0 in the time grid."""

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {self.candidates}")
        if self.importance_steps is not None and self.importance_steps < 0:
            raise ValueError(f"importance_steps must be >= 0, got {self.importance_steps}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.energy == "ar" and self.energy_model is None and self.candidates > 1:
            raise ValueError("energy: ar needs energy_model (an AR run, config or nested config); or set energy: none")

    def bind(self, ctx):
        ctx.add_special_token("mask")


@hookimpl
def genloom_decoders():
    return [records.decoder("edlm", "genloom.plugins.edlm.decoder:build", EDLMConfig,
                            "Masked-diffusion sampling corrected by parallel importance sampling under an AR energy.", PAPER)]
