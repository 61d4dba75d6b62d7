"""DiffuSeq: sequence-to-sequence text generation with continuous diffusion (Gong et al., 2023).

What the paper does. Source and target tokens are embedded into one continuous sequence
``z_0 = [Emb(x) | Emb(y)]`` (the embeddings are learnt with the model, as in Diffusion-LM). The
forward process is *partial*: only the target part is noised, ``z_t = [Emb(x) | sqrt(alpha_bar_t)
Emb(y) + sqrt(1 - alpha_bar_t) eps]``, so the source stays clean at every t and conditions the
denoiser through plain self-attention (no classifier, no cross-attention). A transformer predicts
``z_0`` from ``z_t`` and t; the loss is the squared error of that prediction on the target part
plus a rounding term ``-log p(y | z_0)`` that keeps the embeddings apart. Sampling starts the target
part from Gaussian noise, re-imposes the source embeddings after every step, optionally clamps
each prediction to the nearest token embedding, and rounds the final vectors to their nearest
token embeddings.

What this implementation does.

- head ``embedding-diffusion`` (``genloom.toolkit.embedding_diffusion.EmbeddingDiffusionHead``,
  shared with ar-diffusion-text): the learnt embedding space of ``embed_dim`` dimensions, the lift
  to the backbone width with a timestep embedding added per position (each position's own noise
  level: the clean source reads t = 0), and the prediction of ``z_0``.
- objective ``diffuseq`` (``objective.py``): on source-conditioned data, t ~ U{1..T} per sequence,
  partial noising (``partial_noise``), one pass of the denoiser under the ``full`` pattern, and the
  loss ``||f(z_t, t) - z_0||^2`` (mean over the embedding dimensions) + the rounding loss of the
  prediction + the rounding loss of the clean embeddings, all over the target positions only
  (the target, its end-of-sequence id and its padding: the target block has a fixed length).
- decoder ``diffuseq`` (``decoder.py``): the reverse process over the target block in ``steps``
  evaluations (DDIM, or ancestral draws with ``stochastic``), the source re-imposed after each,
  clamping on by default, nearest-embedding rounding at the end; the output is the target up to
  its first end-of-sequence id.

What it simplifies at toy scale. Uniform t instead of the paper's importance-sampled t; a few
thousand training steps on the embedded synthetic tasks instead of 2000-step processes on
paraphrase and question data; the rounding term is applied to both the clean embeddings and the
prediction (the paper's code applies it to the clean ones; the prediction's term makes short
training runs round correctly); the source positions' timestep embedding is that of t = 0 (the
paper adds the sequence's t everywhere); no minimum-Bayes-risk selection over several samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt
from genloom.toolkit.embedding_diffusion_config import EmbeddingDiffusionDecoderConfig, GaussianDiffusionConfig

_P = "genloom.plugins.diffuseq"

PAPER = records.Paper(
    title="DiffuSeq: Sequence to Sequence Text Generation with Diffusion Models",
    year=2023,
    arxiv="2210.08933",
)


@dataclass
class EmbeddingDiffusionHeadConfig:
    """A learnt token-embedding space for continuous diffusion, with the denoiser's input and output maps."""

    embed_dim: PositiveInt = 16
    """Dimensions of the embedding space the diffusion runs in (the paper: 128)."""
    init_std: PositiveFloat = 1.0
    """Initial scale of the token embeddings (comparable to the unit noise of the forward process)."""


@dataclass
class DiffuSeqConfig(GaussianDiffusionConfig):
    """Partial noising (the source stays clean) and the target-only loss of DiffuSeq."""


@dataclass
class DiffuSeqDecoderConfig(EmbeddingDiffusionDecoderConfig):
    """DiffuSeq sampling: the source re-imposed after every step, nearest-embedding rounding at the end."""


@hookimpl
def genloom_heads():
    return [records.head("embedding-diffusion", "genloom.toolkit.embedding_diffusion:build_embedding_head", EmbeddingDiffusionHeadConfig,
                         "Continuous diffusion in a learnt embedding space: z_0 prediction, nearest-embedding rounding.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("diffuseq", f"{_P}.objective:build", DiffuSeqConfig,
                              "Partial noising: the source stays clean, squared error + rounding loss on the target only.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("diffuseq", f"{_P}.decoder:build", DiffuSeqDecoderConfig,
                            "Reverse diffusion over the target block, source re-imposed each step, rounding to tokens.", PAPER)]
