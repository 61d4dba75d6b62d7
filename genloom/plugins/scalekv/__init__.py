"""ScaleKV: scale-aware KV cache compression for visual autoregressive models (2025).

What the paper does. VAR generates an image scale by scale, each scale attending to all coarser
ones, so the KV cache grows with every scale. ScaleKV observes that layers differ: *drafters*
spread their attention over many scales and need a large cache, *refiners* attend mostly to the
current token map and need little. It classifies layers per scale by their attention pattern and
gives each class its own budget of cached tokens from earlier scales, keeping the most-attended ones.

What this implementation does. Cache policy ``scalekv`` for any attention backbone that decodes VAR
through the core cache (the ``var`` plugin's ``next-scale`` decoder runs one advance per scale, and
the current scale is an advance, so it always stays). After each scale's pass a layer records its
*dispersion*, the attention mass its queries put on earlier scales (``retrieve``, which reads
everything). Before the next scale is appended, the ``drafters`` layers of largest dispersion (per
sequence) keep at most ``budget_drafter`` earlier-scale tokens, the others (refiners) at most
``budget_refiner``, chosen by the attention the incoming scale's queries give them (softmax over the
held keys, summed over heads and queries). With no budgets nothing is evicted: uncompressed VAR.

What it simplifies. Drafters are the top ``drafters`` layers by last scale's dispersion instead of
the paper's profiled per-scale assignment; budgets are token counts per layer; the incoming scale's
queries score the earlier tokens (no observation window).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeInt, PositiveInt

_P = "genloom.plugins.scalekv"

PAPER = records.Paper(title="Memory-Efficient Visual Autoregressive Modeling with Scale-Aware KV Cache Compression", year=2025, arxiv="2505.19602")


@dataclass
class ScaleKVConfig:
    """Per-layer budgets of earlier-scale tokens: drafters keep more, refiners less."""

    budget_refiner: PositiveInt | None = None
    """Earlier-scale tokens a refiner layer keeps per sequence (None: all)."""
    budget_drafter: PositiveInt | None = None
    """Earlier-scale tokens a drafter layer keeps per sequence (None: all)."""
    drafters: NonNegativeInt = 1
    """How many layers (of largest attention dispersion on the last scale) count as drafters."""


@hookimpl
def genloom_components():
    return [records.Component(kind="cache_policy", name="scalekv", factory=f"{_P}.policy:build", config=ScaleKVConfig,
                              summary="ScaleKV: drafter and refiner layers keep different budgets of earlier-scale tokens (VAR).", paper=PAPER)]
