"""The DiffGLAT decoder: the toolkit's confidence sampler with K = the objective's steps.

After step j of K, ``G (K - j) / K`` target positions stay masked (the modality process walked
backwards); each step keeps the most confident predictions.
"""

from __future__ import annotations

from genloom.toolkit.canvas import ConfidenceCanvasDecoder


def build(config, ctx) -> ConfidenceCanvasDecoder:
    return ConfidenceCanvasDecoder(config, ctx, ctx.mask_id)
