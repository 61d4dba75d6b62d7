"""DiffGLAT: the diffusion glancing transformer for parallel sequence-to-sequence learning (2022, arXiv:2212.10240).

What the paper does. A non-autoregressive model must choose one of many target "modalities"
(equally good outputs) at once, which it does badly. DiffGLAT adds a *modality diffusion process*,
a discrete process over the decoding steps that interpolates between the fully masked target and
the target, so each step only has to resolve part of the multi-modality, and *residual glancing
sampling*: as in GLAT, the model first predicts the target, and reference tokens are revealed in
its input in proportion to how wrong the prediction is (its Hamming distance to the target), so
training concentrates on the modalities the model has not learned yet (the paper applies this
across layers, on the residual of what earlier layers got right).

What this implementation does.

- objective ``diffglat`` (``objective.py``): conditional training on ``prompt | target`` batches
  (``prompt_mask``); the modality diffusion step ``k ~ U{1..K}`` masks each target token with
  probability ``k / K`` (``K = steps``); a glancing pass (no gradient) predicts the masked tokens,
  the Hamming distance ``d`` to the reference is measured per sequence, and ``ceil(glance_ratio * d)``
  masked positions chosen at random get their reference token back (:func:`glance`); the training
  pass scores the positions that stay masked.
- decoder ``diffglat``: K-step decoding along the same process: after step j of K, ``G (K - j) / K``
  positions stay masked, the most confident predictions are kept (the toolkit's confidence
  sampler with ``steps = K``).

What it simplifies (the technique table marks the exact process unsure). The glancing is applied
once, at the output layer (GLAT's rule), not residually across layer groups; the modality process
is the masking process indexed by decoding step. Toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.toolkit.canvas_config import CanvasDecoderConfig

PAPER = records.Paper(title="Diffusion Glancing Transformer for Parallel Sequence to Sequence Learning", year=2022, arxiv="2212.10240")

_P = "genloom.plugins.diffglat"


@dataclass
class DiffGLATConfig:
    """Modality-diffusion corruption indexed by decoding step, with GLAT's glancing sampling."""

    steps: int = 4
    """K: decoding steps of the modality diffusion process (published to the decoder)."""
    glance_ratio: float = 0.5
    """Reference tokens revealed = ceil(glance_ratio * Hamming distance of the glancing prediction)."""

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not 0.0 <= self.glance_ratio <= 1.0:
            raise ValueError(f"glance_ratio must be in [0, 1], got {self.glance_ratio}")

    def bind(self, ctx):
        ctx.add_special_token("mask")
        ctx.set("diffusion_steps", self.steps)


@dataclass
class DiffGLATDecoderConfig(CanvasDecoderConfig):
    """K-step decoding along the modality process (steps None: the objective's K)."""

    def bind(self, ctx):
        super().bind(ctx)
        if self.steps is None:
            self.steps = ctx.get("diffusion_steps")


@hookimpl
def genloom_objectives():
    return [records.objective("diffglat", f"{_P}.objective:build", DiffGLATConfig,
                              "Modality diffusion over decoding steps with GLAT glancing: reveal tokens in proportion to the errors.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("diffglat", f"{_P}.decoder:build", DiffGLATDecoderConfig,
                            "K-step parallel decoding along the modality diffusion process.", PAPER)]
