"""LaViDa: a diffusion language model for multimodal understanding (2025, arXiv:2505.16839).

What the paper does. A masked diffusion LM is given a vision encoder and a projector: image
features become a prefix of embeddings in front of the text, and the model answers (captions,
visual questions) by unmasking the answer. Three techniques make it work: *complementary masking*
(each training answer appears in two views whose masked sets are disjoint and cover every answer
token, so short answers' tokens are all trained and each view sees what the other predicts), a
*prefix KV cache* (the image and question never attend to the answer, so their keys/values are
computed once for the whole decoding), and *timestep shifting* (a monotone remap of the unmasking
schedule that reveals more tokens early or late).

What this implementation does. Vision-language at toy scale on scikit-learn's digits: the image
(8x8, 17 intensity levels) is the prompt, as 64 pixel tokens; the answer is the digit's name
written out (``seven.``, padded with EOS).

- objective ``lavida`` (``objective.py``): the vision encoder (4x4 patches -> linear projection to
  the model width: 4 prefix embeddings, ``encoder.py``), the prefix pattern
  :class:`genloom.toolkit.canvas_cache.PromptIsolated` (the image attends only to itself), and the
  masked-diffusion loss on the answer with complementary views
  (:func:`genloom.toolkit.masking.complementary_masks`), each answer token scored exactly once.
- decoder ``lavida`` (``decoder.py``): the image prefix is encoded and run once into a KV cache; each
  step runs only the answer canvas against it (``cache: false`` recomputes the prefix every step,
  the reference); the number of masks left after step k follows the shifted schedule
  ``G * shift(1 - k/S)``, ``shift(t) = s t / (1 + (s - 1) t)`` (``timestep_shift`` s; 1: linear).
- ``data.py``: the digits/label-name batches (train/test split).

What it simplifies. A linear patch projector stands in for the SigLIP encoder; the "question" is
empty (the task is naming the digit); toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="LaViDa: A Large Diffusion Language Model for Multimodal Understanding", year=2025, arxiv="2505.16839")

_P = "genloom.plugins.lavida"


@dataclass
class LaViDaObjectiveConfig:
    """Image-prefix masked diffusion on the answer with complementary masking."""

    image_side: int = 8
    """Side of the square image (pixels); the prompt is image_side**2 pixel tokens."""
    patch: int = 4
    """Side of a square patch: the image becomes (image_side / patch)**2 prefix embeddings."""
    levels: int = 17
    """Pixel intensity levels (pixel tokens 0 .. levels - 1)."""
    mask_rate_min: float = 0.0
    """Lower end of the first view's masking rate (the second view masks the rest)."""
    mask_rate_max: float = 1.0
    """Upper end of the first view's masking rate."""

    def __post_init__(self):
        if self.patch < 1 or self.image_side % self.patch:
            raise ValueError(f"patch must divide image_side, got patch={self.patch}, image_side={self.image_side}")
        if not 0.0 <= self.mask_rate_min <= self.mask_rate_max <= 1.0:
            raise ValueError(f"need 0 <= mask_rate_min <= mask_rate_max <= 1, got mask_rate_min={self.mask_rate_min}, mask_rate_max={self.mask_rate_max}")

    def bind(self, ctx):
        ctx.add_special_token("mask")


@dataclass
class LaViDaDecoderConfig:
    """Answer unmasking against a cached image prefix, with timestep shifting."""

    steps: int | None = None
    """Unmasking steps (None: one token per step)."""
    timestep_shift: float = 1.0
    """s in shift(t) = s t / (1 + (s - 1) t): > 1 keeps more masks early (fewer tokens first), 1 is linear."""
    temperature: float = 0.0
    """0: argmax predictions; > 0: Gumbel-noised draws."""
    cache: bool = True
    """Compute the image prefix's keys/values once (False: recompute the prefix every step)."""

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not self.timestep_shift > 0:
            raise ValueError(f"timestep_shift must be > 0, got {self.timestep_shift}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def bind(self, ctx):
        ctx.add_special_token("mask")


@hookimpl
def genloom_objectives():
    return [records.objective("lavida", f"{_P}.objective:build", LaViDaObjectiveConfig,
                              "Vision-prefix masked diffusion on the answer with complementary masking.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("lavida", f"{_P}.decoder:build", LaViDaDecoderConfig,
                            "Answer unmasking against a once-computed image-prefix KV cache, with timestep shifting.", PAPER)]
