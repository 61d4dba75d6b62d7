"""TESS: text-to-text self-conditioned simplex diffusion (Karimi Mahabadi et al., 2024).

What the paper does. Diffusion runs on the *logit simplex* instead of a learnt embedding space:
token w is the almost-one-hot logit vector ``s_w = k (2 onehot(w) - 1)`` (+k at w, -k elsewhere),
whose argmax is w. The forward process adds Gaussian noise in logit space under a cosine schedule,
``x_t = sqrt(alpha_bar_t) s_w + sqrt(1 - alpha_bar_t) eps``, ``eps ~ N(0, k^2 I)``. The network
reads ``softmax(x_t)`` mapped through the token embeddings, predicts the clean logits and is
trained with cross-entropy. Self-conditioning: with probability 0.5 in training a first pass (no
gradient) predicts logits, and the second pass reads the average of ``softmax(x_t)`` and the
softmax of that prediction; at inference the previous step's prediction is fed back. Sampling
starts from ``k``-scaled noise, and each step projects the predicted logits back to a simplex
vertex (argmax or a top-p draw) and noises it afresh to the next timestep. For sequence to
sequence tasks the source is given as clean simplex vectors and only the target is diffused.

What this implementation does.

- head ``simplex-diffusion`` (``genloom.toolkit.embedding_diffusion.SimplexDiffusionHead``): the
  input ``softmax(x_t) E`` (or the self-conditioned average of probabilities), a timestep embedding
  per position, logits over the vocabulary out.
- objective ``tess`` (``objective.py``): the source clean (its simplex, timestep 0, never scored),
  the target noised to one t per sequence (cosine schedule by default), self-conditioning with
  probability ``self_conditioning`` (the source positions' inputs are never averaged), and the
  cross-entropy of the clean-logit prediction on the target block.
- decoder ``tess`` (``decoder.py``): ``steps`` evaluations; each projects the prediction to the
  simplex vertex of its argmax and re-noises it to the next timestep
  (``genloom.toolkit.embedding_diffusion.renoise_step``), feeding the prediction back as the
  self-conditioning input; the output is the argmax of the last prediction.

What it simplifies at toy scale. A small transformer trained from scratch instead of a pretrained
RoBERTa; the argmax projection only (no top-p draw at each step); the target block has a fixed
length (padded with end-of-sequence ids) instead of a separately predicted length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from genloom.core import hookimpl, records
from genloom.core.constraints import Interval, PositiveFloat, PositiveInt
from genloom.toolkit.embedding_diffusion_config import GaussianDiffusionConfig

_P = "genloom.plugins.tess"

PAPER = records.Paper(
    title="TESS: Text-to-Text Self-Conditioned Simplex Diffusion",
    year=2024,
    arxiv="2305.08379",
)


@dataclass
class SimplexDiffusionHeadConfig:
    """Noisy simplex logits in (through the token embeddings), clean-logit predictions out."""

    init_std: PositiveFloat = 0.02
    """Initial scale of the token embeddings and the output projection."""


@dataclass
class TessConfig(GaussianDiffusionConfig):
    """Gaussian diffusion on k-logit simplex vectors of the target, cross-entropy on the clean logits."""

    schedule: Literal["sqrt", "cosine", "linear"] = "cosine"
    """alpha_bar(t) of the forward process (TESS: cosine)."""
    simplex_value: PositiveFloat = 5.0
    """k: a token is +k at its id and -k elsewhere; the noise has standard deviation k (the paper: 5)."""
    self_conditioning: Annotated[float, Interval(ge=0, le=1)] = 0.5
    """Probability of a self-conditioned training pass (0: never; the input is then the noisy simplex alone)."""

    def bind(self, ctx):
        super().bind(ctx)
        ctx.set("simplex_value", self.simplex_value)


@dataclass
class TessDecoderConfig:
    """TESS sampling: project each prediction to its argmax vertex, re-noise it to the next timestep."""

    steps: PositiveInt = 20
    """Reverse steps (network evaluations) on an even grid of the training timesteps."""
    self_conditioning: bool = True
    """Feed each step's prediction back as the next step's self-conditioning input."""


@hookimpl
def genloom_heads():
    return [records.head("simplex-diffusion", "genloom.toolkit.embedding_diffusion:build_simplex_head", SimplexDiffusionHeadConfig,
                         "Simplex diffusion: softmax of noisy logits through the embeddings in, clean logits out (self-conditioned).", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("tess", f"{_P}.objective:build", TessConfig,
                              "Self-conditioned diffusion on k-logit simplices of the target; cross-entropy on clean logits.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("tess", f"{_P}.decoder:build", TessDecoderConfig,
                            "Simplex reverse process: argmax projection, fresh noise per step, self-conditioning.", PAPER)]
