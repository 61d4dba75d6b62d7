"""LANTERN: relaxed speculative decoding for visual autoregressive models (ICLR 2025, arXiv 2410.03355).

What the paper does. Visual AR models (LlamaGen: a transformer over raster-order VQ tokens) spread
their probability thinly over many interchangeable image tokens ("token selection ambiguity"), so
speculative sampling's test ``min(1, p(x) / q(x))`` rejects most drafts. LANTERN relaxes it with the
latent space of the image tokenizer: ``B_k(x)`` is the set of the ``k`` codebook entries nearest to
``x``'s, and the draft is accepted with ``min(1, p(A(x)) / q(x))`` where ``A(x)`` is the largest part
of ``B_k(x)`` whose aggregation keeps a total-variation distance within a budget ``delta``, so the
image distribution stays close to the target's while far more drafts pass.

What this implementation does.

- decoder ``lantern`` (``decoder.py``): speculative sampling with a draft model on the core's
  propose/verify/commit loop, verifying with :class:`genloom.toolkit.acceptance.RelaxedAcceptance`
  over the target's token latents (the VQ codebook, :func:`genloom.toolkit.image_ar.token_latents`;
  for a model without an image tokenizer, its input embeddings). ``A(x)`` is the longest
  nearest-first prefix of ``B_k(x)`` whose acceptance probability exceeds the exact one by at most
  ``delta``; rejected drafts are replaced from ``norm(max(0, p - q))``. With ``neighbourhood_size: 1``
  or ``delta: 0`` it is exact speculative sampling.
- the image AR setting it runs on, registered here for every decoder of the family: tokenizer
  ``raster-vq`` (a single-scale VQ tokenizer from the registry, by default ``var-vq`` with one
  scale, plus one start token per class) and objective ``raster-next-token`` (next-token
  cross-entropy on ``[class token, raster ids]``), both from :mod:`genloom.toolkit.image_ar`, with
  the baseline ``lm`` head and ``transformer`` backbone.

What it simplifies, and one choice. 8x8 digits, a 4x4 latent and a 32-entry codebook instead of
256x256 ImageNet and 16,384 codes; no classifier-free guidance. The budget: the paper limits the
total variation of each draft's relaxed target (the mass of ``A(x)`` moved onto ``x``), which bounds
each draft but not the law of the output. Here ``delta`` limits how much the relaxation raises each
draft's acceptance probability, which gives ``TV(output, target) <= delta`` at every token, exactly
(proved in :class:`~genloom.toolkit.acceptance.RelaxedAcceptance`, checked by enumeration).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveInt, Probability
from genloom.toolkit.draft_config import DraftModelConfig
from genloom.toolkit.image_ar_config import RasterNextTokenConfig, RasterVQConfig

_P = "genloom.plugins.lantern"
_T = "genloom.toolkit.image_ar"

PAPER = records.Paper(
    title="LANTERN: Accelerating Visual Autoregressive Models with Relaxed Speculative Decoding",
    year=2025,
    arxiv="2410.03355",
    url="https://github.com/jadohu/LANTERN",
)
#: The raster-order visual AR setting (a transformer over VQ tokens) that LANTERN accelerates.
LLAMAGEN = records.Paper(
    title="Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation",
    year=2024,
    arxiv="2406.06525",
)


@dataclass
class LanternConfig(DraftModelConfig):
    """Speculative sampling with relaxed acceptance (fields draft, gamma, seed from DraftModelConfig)."""

    neighbourhood_size: PositiveInt = 8
    """k: how many nearest tokens in latent space (the token itself included) ``A(x)`` may hold; 1 is exact."""
    delta: Probability = 0.2
    """Total-variation budget: the relaxation raises a draft's acceptance probability by at most
    delta, so the output law is within delta of the target's at every token; 0 is exact."""


@hookimpl
def genloom_decoders():
    return [records.decoder(
        "lantern", f"{_P}.decoder:build", LanternConfig,
        "LANTERN: speculative sampling that accepts a draft if its latent neighbourhood has the target's mass (TV budget delta).", PAPER)]


@hookimpl
def genloom_tokenizers():
    return [records.tokenizer(
        "raster-vq", f"{_T}:build_tokenizer", RasterVQConfig,
        "Raster-order image tokens: a single-scale VQ tokenizer from the registry plus one start token per class.", LLAMAGEN)]


@hookimpl
def genloom_objectives():
    return [records.objective(
        "raster-next-token", f"{_T}:build_objective", RasterNextTokenConfig,
        "Next-token prediction over [class token, raster-order VQ ids] of images (LlamaGen-style).", LLAMAGEN)]
