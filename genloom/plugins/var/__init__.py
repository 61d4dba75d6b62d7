"""VAR: Visual Autoregressive Modeling, next-scale prediction (Tian et al., 2024, arXiv:2404.02905).

What the paper does. An image is tokenized by a multi-scale residual VQ autoencoder into K token
maps r_1..r_K of growing side s_1 < ... < s_K (1, 2, 3, 4, 5, 6, 8, 10, 13, 16 on ImageNet), all
drawn from ONE shared codebook: scale k quantizes the residual between the encoder's feature map
f and the running reconstruction f_hat, area-downsampled to s_k x s_k; the code embeddings are
upsampled back (bicubic), passed through a small convolution phi_k and added to f_hat
(Algorithm 1); the decoder sees f_hat = sum_k phi_k(up(z_k)). A transformer then models
p(r_1..r_K) = prod_k p(r_k | r_<k, class): all s_k^2 tokens of a scale are predicted in parallel
("next-scale prediction"), under a block-causal mask (a token sees its own scale and all coarser
ones). The input of scale k is the accumulated f_hat of scales < k, resized to s_k x s_k; scale 1's
input is the class embedding (the start token). Sampling therefore takes K transformer passes, not
sum_k s_k^2, reusing a KV cache across scales, with classifier-free guidance (class dropped to a
null class during training, guidance growing linearly with the scale) and top-k/top-p sampling.

What this implementation does.

- Tokenizer ``var-vq`` (``tokenizer.py``): conv encoder/decoder, shared codebook, one phi_k per
  scale (x (1 - r) + conv3x3(x) r, r = ``phi_ratio``), residual quantization exactly as above,
  trained by its own ``fit`` (reconstruction MSE + codebook/commitment loss with a straight-through
  estimator, averaged over scales) before the transformer trains; then frozen. ``encode`` gives one
  (B, s_k^2) id tensor per scale, ``decode_ids`` turns the first k <= K scales back into images.
- Head ``next-scale`` (``head.py``): VAR's input side -- class embeddings (plus the null class),
  the start-token position, a linear map of latent features into the model width, learned absolute
  position embeddings and per-scale level embeddings -- and the output projection onto the codebook.
- Objective ``next-scale`` (``objective.py``): [class token] + teacher-forced inputs of scales
  2..K, targets = the tokens of all K scales, attention pattern ``block_causal`` with
  ``block_lengths = (s_1^2, ..., s_K^2)`` (a value, not a matrix), label dropout ``cond_drop``.
- Decoder ``next-scale`` (``decoder.py``): one scale per step of the core's propose/verify/commit
  loop; exactly K backbone passes with the KV cache; classifier-free guidance as a doubled batch;
  the session's processors (top-k, top-p, temperature) act on every token of the scale.
  The prompt of each sequence is its class label (its last prompt id).
- ``save_grid`` (``grid.py``): a PNG grid writer (zlib, no imaging library needed).
- The backbone is the baseline ``transformer`` from the registry (VAR uses a plain GPT-2-like
  transformer; set ``rope: false`` to keep to its learned absolute positions).

Simplifications at toy scale. 8x8/16x16 digits, a 4x4 latent and scales (1, 2, 3, 4) instead of
256x256 images and 10 scales up to 16x16; a 64-entry codebook instead of 4096; one phi_k per scale
(the paper shares 4 convolutions across the 10 scales by nearest scale); no perceptual/GAN losses
for the tokenizer; the class enters only through the start token (the paper also conditions every
block by adaptive layer norm); guidance on the logits as in the paper's released sampler. The
properties the tests prove are exact: f_hat fed to the decoder equals the sum of the scale
contributions; reconstruction error on held-out digits falls as scales are added; logits of scale k
ignore tokens of scales >= k; K passes; cached decoding equals the full teacher-forced forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Seed

PAPER = records.Paper(
    title="Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction",
    year=2024,
    arxiv="2404.02905",
    url="https://github.com/FoundationVision/VAR",
)

_P = "genloom.plugins.var"


@dataclass
class VarVQConfig:
    """Multi-scale residual VQ autoencoder (VAR's tokenizer)."""

    scales: tuple[PositiveInt, ...] = (1, 2, 3, 4)
    """Side s_k of the token map of each scale, coarse to fine; the last one is the latent side."""
    codebook_size: PositiveInt = 64
    """Entries V of the one codebook shared by all scales (the transformer's vocabulary)."""
    latent_channels: PositiveInt = 16
    """Channels C of the feature map f and of the code embeddings."""
    hidden_channels: PositiveInt = 32
    """Width of the convolutional encoder and decoder."""
    phi_ratio: Probability = 0.5
    """phi_k(x) = (1 - r) x + r conv3x3(x) (the paper's quant_resi, 0.5)."""
    beta: NonNegativeFloat = 0.25
    """Weight of the commitment term (encoder pulled toward f_hat)."""
    upsample_mode: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    """How code maps are upsampled to the latent side (the paper: bicubic)."""
    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None
    """(channels, height, width) of the images; None: from the data set (ctx channels/height/width)."""
    fit_steps: NonNegativeInt = 500
    """Optimizer steps of fit() (the tokenizer trains before the transformer)."""
    fit_batch_size: PositiveInt = 64
    fit_lr: PositiveFloat = 2e-3
    """Adam learning rate of fit(), cosine-decayed to 10%."""
    fit_seed: Seed = 0
    """Seed of fit()'s batch sampling."""

    def __post_init__(self):
        scales = tuple(self.scales)
        if not scales or any(s < 1 for s in scales) or any(a >= b for a, b in zip(scales, scales[1:])):
            raise ValueError(f"scales must be positive and strictly increasing, got {scales}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if not 0.0 <= self.phi_ratio <= 1.0:
            raise ValueError(f"phi_ratio must be in [0, 1], got {self.phi_ratio}")
        if self.fit_steps < 0:
            raise ValueError(f"fit_steps must be >= 0, got {self.fit_steps}")
        if self.image_shape is not None:
            c, h, w = self.image_shape
            if h != w or h % scales[-1] or (h // scales[-1]) & (h // scales[-1] - 1):
                raise ValueError(f"image_shape {tuple(self.image_shape)} must be square with a side that is a power-of-two multiple of the last of scales {scales}")

    def bind(self, ctx):
        ctx.set("scales", tuple(self.scales))
        ctx.set("latent_channels", self.latent_channels)
        ctx.set("seq_len", sum(s * s for s in self.scales))


@dataclass
class NextScaleHeadConfig:
    """VAR's input embeddings (class, start, features, positions, levels) and output projection."""

    init_std: PositiveFloat = 0.02
    """Standard deviation of the embedding and output initialisation."""


@dataclass
class NextScaleObjectiveConfig:
    """Next-scale prediction: cross-entropy on the tokens of all scales under a block-causal mask."""

    cond_drop: Probability = 0.1
    """Probability of replacing the class by the null class in training (for classifier-free guidance)."""
    label_smoothing: Probability = 0.0
    """Label smoothing of the cross-entropy (the paper uses 0.1 at scale)."""

    def __post_init__(self):
        if not 0.0 <= self.cond_drop <= 1.0:
            raise ValueError(f"cond_drop must be in [0, 1], got {self.cond_drop}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class NextScaleDecoderConfig:
    """Scale-by-scale sampling with a KV cache and classifier-free guidance."""

    cfg_scale: NonNegativeFloat = 1.5
    """Guidance t: logits = (1 + t) cond - t uncond; 0 turns guidance off (no doubled batch)."""
    cfg_schedule: Literal["linear", "constant"] = "linear"
    """'linear': scale k uses t * k / (K - 1) (the paper's sampler, no guidance at scale 1); 'constant': t everywhere."""

    def __post_init__(self):
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")


@hookimpl
def genloom_tokenizers():
    return [records.tokenizer("var-vq", f"{_P}.tokenizer:build_tokenizer", VarVQConfig, "Multi-scale residual VQ autoencoder with one shared codebook (trains itself in fit).", PAPER)]


@hookimpl
def genloom_heads():
    return [records.head("next-scale", f"{_P}.head:build_head", NextScaleHeadConfig, "VAR input embeddings (class, latent features, positions, scale levels) and codebook logits.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("next-scale", f"{_P}.objective:build_objective", NextScaleObjectiveConfig, "Next-scale prediction under a block-causal mask over scales, with class dropout.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("next-scale", f"{_P}.decoder:build_decoder", NextScaleDecoderConfig, "One scale per step (K passes) with a KV cache and classifier-free guidance.", PAPER)]
