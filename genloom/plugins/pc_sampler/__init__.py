"""PC-Sampler: position-aware calibration of decoding bias in masked diffusion models (2025, arXiv:2508.13021).

What the paper does. Confidence-based samplers for masked diffusion models reveal, at every step,
the masked positions whose predicted token is most probable. The paper finds two biases: no
global control of the decoding trajectory (a "U-shaped" order that fills both ends of the answer
first) and a preference for trivial, frequent tokens (spaces, punctuation, end-of-text) early on.
PC-Sampler ranks masked positions by

    score(i) = exp(-lambda * (i - |prompt|)) * min(-p_theta(x_hat^i) * log p_D'(x_hat^i), alpha)

a position-aware weight that steers the order towards left to right (strength ``lambda``) times a
confidence calibrated by the self-information of the predicted token under a token-frequency
prior ``p_D'`` from a reference corpus, clipped at ``alpha``; it then reveals the top-scoring
positions with the usual schedule. Training-free.

What this plugin implements. Decoder ``pc-sampler`` on the core's propose/verify/commit loop
over a canvas of ``max_new_tokens`` masked tokens after the prompt (one network call per step,
the newly completed left prefix committed each step), with the token prior counted from a
reference corpus encoded with the model's own tokenizer: by default the Python standard library's
sources (the project's embedded text), or local text files; add-``prior_smoothing`` smoothing.
With ``position_decay: 0`` and ``calibration: false`` it is exactly the standard greedy
max-confidence sampler (tested token for token against the ``masked-diffusion`` decoder); as
``position_decay`` grows the order becomes strictly left to right.

What it simplifies. Toy scale. The weight is computed relative to the leftmost still-masked
position of the row (``exp(-lambda * (i - i_min))``), which multiplies a row's scores by one
constant and so selects the same positions as the paper's ``i - |prompt|`` while avoiding
underflow for large ``lambda`` (ties among underflowed weights go to the leftmost position).
The paper's reference corpus (general text + maths + the evaluation sets) is replaced by a
configurable local one. The calibration's exact form is stated in the paper's algorithm as
``p_hat * log p_D'(x_hat)`` clipped at ``alpha``; we read it as the (positive) self-information
``-log p_D'`` times the confidence, which is what suppresses frequent tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.toolkit.canvas_config import CanvasDecoderConfig
from genloom.core.constraints import ALLOW_INFINITY, Ge, NonNegativeFloat, PositiveFloat, PositiveInt

PAPER = records.Paper(
    title="PC-Sampler: Position-Aware Calibration of Decoding Bias in Masked Diffusion Models",
    year=2025,
    arxiv="2508.13021",
)


@dataclass
class PCSamplerConfig(CanvasDecoderConfig):
    """Position-aware, frequency-calibrated unmasking for masked diffusion models."""

    position_decay: Annotated[float, Ge(0), ALLOW_INFINITY] = 0.25
    """lambda of the position weight exp(-lambda * i); 0 turns the position awareness off, .inf
    makes the order strictly left to right."""
    calibration: bool = True
    """Multiply the confidence by the token's self-information -log p_D'(token) under the prior."""
    clip_alpha: PositiveFloat = 10.0
    """alpha: upper clip of the calibrated confidence."""
    reference_corpus: str = "stdlib"
    """Text the token prior is counted on: 'stdlib' (the Python standard library's sources) or a
    path to a local text file or folder (its files are read recursively)."""
    reference_max_bytes: PositiveInt = 1_000_000
    """Read at most this many bytes of the reference corpus."""
    prior_smoothing: NonNegativeFloat = 1.0
    """Pseudo-count added to every token of the vocabulary (no token gets probability 0)."""

    def __post_init__(self):
        super().__post_init__()
        if self.position_decay < 0:
            raise ValueError(f"position_decay must be >= 0, got {self.position_decay}")
        if self.clip_alpha <= 0:
            raise ValueError(f"clip_alpha must be > 0, got {self.clip_alpha}")
        if self.prior_smoothing <= 0:
            raise ValueError(f"prior_smoothing must be > 0 (a zero-probability token has infinite self-information), got {self.prior_smoothing}")


@hookimpl
def genloom_decoders():
    return [records.decoder("pc-sampler", "genloom.plugins.pc_sampler.decoder:build", PCSamplerConfig,
                            "Masked-diffusion unmasking by exp(-lambda i) x frequency-calibrated confidence.", PAPER)]
