"""TEMPO: prompt-based generative pretrained transformer for time-series forecasting (Cao et al., ICLR 2024).

What the paper does: each (instance-normalised) window is decomposed by STL into trend, seasonal
and residual parts; each part is cut into patches and embedded. A *prompt pool* of learnable
(key, prompt) pairs is queried with each part's embedding: the ``k`` prompts whose keys have the
highest cosine similarity with the query are prepended to that part's tokens (a matching loss pulls
the selected keys towards their queries), so similar series reuse similar prompts. A pretrained
GPT-2 (LoRA-tuned) reads the prompted tokens; each part's output tokens are projected to the
horizon and the three forecasts are summed.

What this implementation does:

- tokenizer ``patch`` (channel-independent, normalised per window) and head ``patch-values`` from
  the toolkit; the backbone rebuilds the normalised window from the patches and decomposes it with
  ``genloom.toolkit.forecasting_patches.decompose`` (trend = centred moving average over
  ``trend_kernel`` steps, seasonal = the detrended window's mean at each phase of ``period``, centred;
  residual = the rest, so the three sum to the window exactly);
- backbone ``tempo``: per part a ``Linear(P, d_lm)`` patch embedding; a shared ``PromptPool``
  (``pool_size`` keys and prompts of ``prompt_len`` tokens); selection by cosine similarity between
  the part's query (its mean patch embedding, detached) and the keys, top ``top_k``, prompts
  gathered by index, so only the selected prompts and keys receive gradient; the frozen LM
  (``FrozenLM``, a genloom-trained language model from ``lm_run``) over ``[prompts, part tokens]``;
  per part ``Linear(N d_lm, horizon)`` on the flattened part outputs; the forecast is the sum;
- objective ``tempo``: the ``mse`` objective (built through the registry) plus ``key_weight`` times the
  matching loss ``mean(1 - cos(query, selected key))``.

What it simplifies: STL's LOESS smoothers are replaced by a moving average and a periodic mean
(classical additive decomposition, per window); GPT-2 is replaced by a small frozen genloom LM (no
LoRA: the LM is entirely frozen); one prompt pool shared by the three parts; toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, PositiveInt

PAPER = records.Paper(
    title="TEMPO: Prompt-based Generative Pre-trained Transformer for Time Series Forecasting",
    year=2024,
    arxiv="2310.04948",
    url="https://github.com/DC-research/TEMPO",
)

_P = "genloom.plugins.tempo"


@dataclass
class TempoConfig:
    """Decomposed, patched series with retrieved prompts through a frozen LM; the three parts' forecasts are summed."""

    lm_run: str | None = None
    """Run directory of the genloom-trained language model kept frozen (e.g. runs/frozen-lm)."""
    pool_size: PositiveInt = 8
    """Prompts (and keys) in the pool."""
    prompt_len: PositiveInt = 2
    """Tokens per prompt."""
    top_k: PositiveInt = 2
    """Prompts retrieved per part (at most pool_size)."""
    period: PositiveInt | None = None
    """Season of the decomposition (None: the data set's season)."""
    trend_kernel: PositiveInt | None = None
    """Odd moving-average window of the trend (None: the smallest odd number >= period, at least 3)."""
    patch_len: PositiveInt | None = None
    """Steps per patch (None: the patch tokenizer's)."""
    lookback: PositiveInt | None = None
    """Window length (None: the data set's)."""
    horizon: PositiveInt | None = None
    """Forecast steps (None: the data set's)."""

    def __post_init__(self):
        if self.top_k > self.pool_size:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed pool_size ({self.pool_size})")
        if self.trend_kernel is not None and self.trend_kernel % 2 == 0:
            raise ValueError(f"trend_kernel must be odd (a centred window), got {self.trend_kernel}")

    def bind(self, ctx) -> None:
        if self.patch_len is None:
            self.patch_len = ctx.patch_len
        if self.lookback is None:
            self.lookback = ctx.lookback
        if self.horizon is None:
            self.horizon = ctx.horizon
        if self.period is None:
            self.period = ctx.get("season", 1)
        if self.trend_kernel is None:
            self.trend_kernel = max(3, self.period + 1 - self.period % 2)


@dataclass
class TempoObjectiveConfig:
    """Forecast MSE plus the prompt pool's key-matching loss."""

    key_weight: NonNegativeFloat = 0.1
    """Weight of mean(1 - cos(query, selected key)) in the loss."""


@hookimpl
def genloom_backbones():
    return [records.backbone("tempo", f"{_P}.model:build", TempoConfig,
                             "TEMPO: trend/seasonal/residual patches with retrieved prompts through a frozen LM, forecasts summed.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("tempo", f"{_P}.objective:build", TempoObjectiveConfig,
                              "TEMPO: forecast MSE plus the prompt pool's key-matching loss.", PAPER)]
