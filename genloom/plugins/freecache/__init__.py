"""FreeCache and Guided Diffusion for diffusion language models (2025, arXiv:2505.21467).

What the paper does. A masked diffusion LM recomputes the keys/values of every position at every
denoising step, although in semi-autoregressive (block-by-block) decoding the prompt and the
already-decoded blocks hardly change. FreeCache reuses those stable keys/values across steps and
recomputes only the block being decoded, refreshing the cache periodically. Guided Diffusion uses
a small pretrained autoregressive model to decide which tokens to unmask: the diffusion model
proposes every token of the block, the AR guide checks them in one causal pass, and the tokens it
agrees with are unmasked together, so far fewer denoising steps are needed.

What this implementation does. Decoder ``freecache`` (``decoder.py``), a
:class:`genloom.toolkit.canvas.ConfidenceCanvasDecoder` (canvas of the prompt and masks, full
attention, blocks of ``block_length`` left to right) whose network call goes through a
:class:`genloom.toolkit.canvas_cache.StaleCache`: a full pass at the start of every block and every
``refresh_every`` steps keeps every position's keys/values; the steps between recompute only the
current block's columns and reuse the prompt's and the other blocks' keys/values. The positions
recomputed are counted (``metrics.extra["positions_computed"]``). With ``refresh_every: 1`` every
step is a full pass: exactly the uncached decoder. With ``guide`` (an AR run or config sharing
the vocabulary, without the mask token), each step fills the block with the diffusion model's
predictions, runs the guide once over the canvas (causal) and unmasks the longest left-to-right
run of masked positions whose prediction equals the guide's greedy choice; if the first one
disagrees, the diffusion model's most confident position is unmasked (at least one per step).

What it simplifies. Toy scale. The exact acceptance rule of Guided Diffusion is our reading of
the paper (longest agreeing run, greedy guide, at least one token per step); the paper also
studies other guide sizes and thresholds. Logits processors apply to full passes and cached
passes alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genloom.core import hookimpl, records
from genloom.toolkit.canvas_config import CanvasDecoderConfig

PAPER = records.Paper(
    title="Accelerating Diffusion Language Model Inference via Efficient KV Caching and Guided Diffusion",
    year=2025,
    arxiv="2505.21467",
)


@dataclass
class FreeCacheConfig(CanvasDecoderConfig):
    """Confidence-based block decoding with FreeCache's key/value reuse and optional AR guidance."""

    refresh_every: int = 4
    """Full pass every this many steps (and at every block start); 1: every step (exact, uncached)."""
    guide: str | dict[str, Any] | None = None
    """An AR guide model (run directory, weights file, config .yaml or nested config) with the
    diffusion model's vocabulary minus the mask token; None: no guidance."""
    guide_seed: int = 0
    """Seed for the weights of a guide built from a nested config."""

    def __post_init__(self):
        super().__post_init__()
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1, got {self.refresh_every}")
        if self.guide is not None and not isinstance(self.guide, (str, dict)):
            raise ValueError(f"guide must be a path (str) or a nested model config (mapping), got {type(self.guide).__name__}")


@hookimpl
def genloom_decoders():
    return [records.decoder("freecache", "genloom.plugins.freecache.decoder:build", FreeCacheConfig,
                            "Block decoding that reuses stable keys/values between refreshes; optional AR-guided unmasking.", PAPER)]
