"""Collaborative Decoding (CoDe) for Visual Autoregressive models (arXiv 2411.17787).

What the paper does. VAR generates an image scale by scale (next-scale prediction); the large
scales hold most of the tokens but need few parameters (their tokens are high-frequency detail
conditioned on a fixed coarse layout), and the content of each scale is largely exclusive to it.
CoDe therefore splits the K steps between two VAR models of one tokenizer: the large model, the
*drafter*, generates the first ``N`` (small) scales, where the semantics and layout are decided;
the small model, the *refiner*, takes the drafter's accumulated feature map and generates the
remaining (large) scales. With ``N`` = 6 of 10 scales on ImageNet 256 it reports 1.7x faster
sampling at almost the same FID; the refiner is also fine-tuned for its scales.

What this implementation does.

- decoder ``code-var`` (``decoder.py``): the session's model is the drafter (a VAR model from the
  ``var`` plugin's components: ``var-vq`` tokenizer, ``next-scale`` head and objective, through the
  registry), the refiner another VAR model (``refiner``: a run directory, a config file or a
  nested config, loaded like a draft model). Scales ``1..draft_scales`` come from the drafter,
  one pass each with its KV cache; the refiner then reads the class token and the inputs of all
  drafted scales in ONE block-causal pass and generates the rest, one pass per scale. Classifier-
  free guidance (doubled batch) and processors as in VAR's sampler. With ``draft_scales >= K`` the
  output equals the drafter's own next-scale sampling token for token under the same seed, and
  the drafter runs exactly ``draft_scales`` passes (``K - draft_scales`` for the refiner).
- The refiner must share the drafter's fitted tokenizer; the decoder checks the codebooks.

What it simplifies. Digits with scales (1, 2, 3, 4) and a 4-layer drafter / 1-layer refiner
instead of VAR-d30 / VAR-d16 on ImageNet; no refiner fine-tuning on its own scales (it is a VAR
model trained on all scales, which the paper's training-free variant also uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, PositiveInt, Seed

PAPER = records.Paper(
    title="Collaborative Decoding Makes Visual Auto-Regressive Modeling Efficient",
    year=2025,
    arxiv="2411.17787",
    url="https://github.com/czg1225/CoDe",
)


@dataclass
class CoDeConfig:
    """Collaborative decoding: the large VAR model drafts the first scales, a small one refines the rest."""

    refiner: str | dict[str, Any] | None = None
    """The small VAR model: a run directory, a weights file inside one or a config .yaml (str, read
    on first use), or a nested model config. It must share the drafter's tokenizer and scales."""
    draft_scales: PositiveInt = 2
    """N: scales 1..N come from the large model (N passes), the rest from the refiner; N >= K is the
    large model alone."""
    cfg_scale: NonNegativeFloat = 1.5
    """Guidance t: logits = (1 + t) cond - t uncond; 0 turns guidance off (no doubled batch)."""
    cfg_schedule: Literal["linear", "constant"] = "linear"
    """'linear': scale k uses t * k / (K - 1) (VAR's sampler); 'constant': t everywhere."""
    seed: Seed = 0
    """Seed for the initial weights of a refiner built from a nested config."""

    def __post_init__(self):
        if self.refiner is not None and not isinstance(self.refiner, (str, dict)):
            raise ValueError(f"refiner must be a path (str) or a nested model config (mapping), got {type(self.refiner).__name__}")


@hookimpl
def genloom_decoders():
    return [records.decoder(
        "code-var", "genloom.plugins.code_var.decoder:build", CoDeConfig,
        "Collaborative decoding: a large VAR model drafts the coarse scales, a small one refines the fine scales.", PAPER)]
