"""AutoTimes: autoregressive time-series forecasters via a frozen large language model (Liu et al., NeurIPS 2024).

What the paper does: a series is split into non-overlapping segments of S steps; each segment is
one token, embedded into the LLM's token space by a small trainable MLP; the LLM stays frozen and,
being causal, predicts from the hidden state of segment i the next segment (another MLP maps it
back to S values). Training is next-token prediction over the segments; forecasting is an
autoregressive rollout, so one model serves any horizon (and in-context forecasting works by
prepending other series). Textual timestamps of each segment, embedded by the same frozen LLM
(the last token's hidden state), are added to the segment embeddings as position embeddings.

What this implementation does:

- tokenizer ``patch`` (channel-independent segments, normalised per window), head ``patch-values``
  and objective ``next-patch`` (teacher-forced next-segment MSE; rollout over a sliding lookback
  window), all shared from ``genloom.toolkit.forecasting_patches``;
- backbone ``autotimes``: ``SegmentEmbedding`` (``Linear(S, h)``, GELU, ``Linear(h, d_lm)``), the
  frozen LM (``FrozenLM``: the backbone of a genloom-trained language-model run, loaded from
  ``lm_run``; no parameter gets a gradient, it stays in eval mode, gradients flow *through* it),
  and ``SegmentProjection`` (``d_lm -> h -> S``). With ``position_text`` the frozen LM embeds the
  text ``"segment i"`` for every position i once, and that vector is added to the i-th segment
  embedding.

What it simplifies: the LLM is a small byte-level transformer trained by genloom on Python
sources (configs/frozen-lm.yaml), a stand-in for LLaMA/GPT-2; the windows carry no calendar, so the
position text names the segment's index in the context instead of its timestamp (same mechanism:
text -> frozen LM -> vector added per segment); no in-context (multi-series) prompting; toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveInt

PAPER = records.Paper(
    title="AutoTimes: Autoregressive Time Series Forecasters via Large Language Models",
    year=2024,
    arxiv="2402.02370",
    url="https://github.com/thuml/AutoTimes",
)

_P = "genloom.plugins.autotimes"


@dataclass
class AutoTimesConfig:
    """Segment tokens through a frozen causal LM: trainable embedding and projection MLPs around it."""

    lm_run: str | None = None
    """Run directory of the genloom-trained language model kept frozen (e.g. runs/frozen-lm)."""
    hidden: PositiveInt = 64
    """Hidden width of the segment embedding and projection MLPs."""
    position_text: bool = True
    """Add the frozen LM's embedding of the text "segment i" to the i-th segment embedding."""
    max_segments: PositiveInt = 64
    """Longest segment sequence (lookback plus target segments) the position texts cover."""
    segment_len: PositiveInt | None = None
    """Steps per segment (None: the patch tokenizer's patch_len)."""

    def bind(self, ctx) -> None:
        if self.segment_len is None:
            self.segment_len = ctx.patch_len


@hookimpl
def genloom_backbones():
    return [records.backbone("autotimes", f"{_P}.model:build", AutoTimesConfig,
                             "AutoTimes: segment tokens through a frozen causal LM with trainable embedding/projection; next-segment rollout.", PAPER)]
