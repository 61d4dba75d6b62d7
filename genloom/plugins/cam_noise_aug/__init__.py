"""Continuous autoregressive models with noise augmentation (Pasini et al., 2024).

What the paper does. A continuous autoregressive model (CAM) generates a sequence of continuous
embeddings (audio latents of a pretrained autoencoder) one at a time: a causal transformer reads
the previous embeddings and a small per-position diffusion head, conditioned on the transformer's
output, samples the next embedding. Errors accumulate because at inference the model reads its
own imperfect outputs. The fix: in training, the *input* embeddings (the fed-back ones) are
corrupted with Gaussian noise at a random level per sequence, the level is given to the model as
conditioning, and the targets stay clean; the model learns to predict the clean next embedding
from inputs of any error level. At inference a fixed small noise level is injected into every
generated embedding before it is fed back.

What this implementation does.

- head ``cam`` (``head.py``): the continuous embeddings of the tokens (a fixed random table of
  ``latent_dim`` dimensions, standing in for the paper's autoencoder latents), the input map with
  a noise-level embedding *relative to the clean level* (exactly zero at level 0), and the
  per-position diffusion head (an MLP denoiser on ``[z_t, t, h]`` predicting the clean embedding,
  trained with the squared error at a uniform timestep, sampled with ancestral steps through
  ``genloom.toolkit.embedding_diffusion``).
- objective ``cam-noise-aug`` (``objective.py``): inputs ``x_{<i} + sigma eps`` with
  ``sigma ~ U[0, max_noise]`` per sequence, the level embedded and added, the causal backbone,
  and the diffusion loss of the clean next embeddings. With ``max_noise = 0`` this is plain
  continuous autoregressive training, exactly.
- decoder ``cam`` (``decoder.py``): on the shared loop, the prompt's clean embeddings prefill the
  backbone's state; each round the diffusion head samples the next embedding (``diffusion_steps``
  head evaluations), the nearest token's id is committed (so text comes out), and the *continuous*
  sample plus ``inference_noise`` times fresh Gaussian noise is fed back with that level's
  embedding.

What it simplifies at toy scale. Text bytes instead of music: the continuous sequence is the
table's embedding of each byte (fixed, not a trained VAE's latents), and a generated embedding is
also rounded to its nearest byte so the shared loop can commit ids; the noise is additive
(``x + sigma eps``) with a uniform level; one diffusion timestep per position per step; no
classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.constraints import Interval, PositiveInt, Seed

_P = "genloom.plugins.cam_noise_aug"

PAPER = records.Paper(
    title="Continuous Autoregressive Models with Noise Augmentation Avoid Error Accumulation",
    year=2024,
    arxiv="2411.18447",
)


@dataclass
class CamHeadConfig:
    """Continuous token embeddings in, a per-position diffusion head out."""

    latent_dim: PositiveInt = 16
    """Dimensions of the continuous embeddings the model generates."""
    latent_seed: Seed = 0
    """Seed of the fixed embedding table (standing in for a pretrained autoencoder's latents)."""
    diffusion_steps: Annotated[int, Interval(ge=2)] = 100
    """T of the diffusion head's forward process (cosine schedule)."""
    head_width: PositiveInt = 128
    """Hidden width of the diffusion head's MLP."""


@dataclass
class CamNoiseAugConfig:
    """Noise augmentation of the fed-back input embeddings; clean targets; the level as conditioning."""

    max_noise: Annotated[float, Interval(ge=0)] = 0.5
    """Upper end of the uniform noise level sigma of the inputs (0: plain continuous AR training)."""


@dataclass
class CamDecoderConfig:
    """Autoregressive sampling of continuous embeddings with noise injected before feeding them back."""

    inference_noise: Annotated[float, Interval(ge=0)] = 0.1
    """The fixed noise level added to each generated embedding before it is fed back (0: none)."""
    diffusion_steps: PositiveInt = 20
    """Ancestral steps of the diffusion head per generated embedding."""


@hookimpl
def genloom_heads():
    return [records.head("cam", f"{_P}.head:build", CamHeadConfig,
                         "Continuous embeddings in, per-position diffusion head out (noise-level conditioning).", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("cam-noise-aug", f"{_P}.objective:build", CamNoiseAugConfig,
                              "Continuous AR training with Gaussian noise on the fed-back inputs only, level as conditioning.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("cam", f"{_P}.decoder:build", CamDecoderConfig,
                            "Continuous AR sampling; a fixed small noise level injected into fed-back embeddings.", PAPER)]
