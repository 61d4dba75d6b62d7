"""S-Mamba: "Is Mamba Effective for Time Series Forecasting?" (Wang et al., 2024).

What the paper does: Simple-Mamba keeps iTransformer's inverted view -- each variate's lookback
series is embedded by a linear layer into one token -- and replaces the attention across variates
by a *bidirectional* Mamba layer: one Mamba block reads the variate tokens in order, a second one
reads them reversed, and their outputs are added, ``Y = Mamba_f(U) + flip(Mamba_b(flip(U)))``,
so every variate token sees every other one at linear cost. A residual connection and a norm
follow, then a feed-forward network on each token ("temporal dependencies") with its own
residual and norm; a linear layer maps each token to its forecast.

What this implementation does:

- tokens: the ``variate`` tokenizer (itransformer plugin) and the baseline ``forecast`` head
  (``Linear(lookback, d_model)`` in, ``Linear(d_model, horizon)`` out), both from the registry;
- backbone ``s-mamba``: ``n_layers`` encoder layers, each
  ``U = norm1(U + dropout(Mamba_f(U) + flip(Mamba_b(flip(U)))))``,
  ``U = norm2(U + dropout(FFN(U)))`` (LayerNorm, FFN = Linear-GELU-Linear), then a final
  LayerNorm. ``Mamba_f`` and ``Mamba_b`` are two independent one-block ``mamba`` backbones built
  through the registry (causal pattern each; their own kernels through the dispatcher). The layer
  as a whole serves the ``full`` pattern: every variate token depends on every other one.

The two directions are separate blocks with their own parameters, as in the paper and its code
(the techniques table writes the formula with one ``Mamba``; the tests check it with two).

What it simplifies: the registry's Mamba backbone is a pre-norm residual block (RMSNorm, then the
Mamba mixer, plus its input), so each direction already carries a skip connection; built with
``final_norm: false``. Toy scale (d_model 32, d_state 8-16, one or two layers) on statsmodels'
macrodata instead of the paper's 13 benchmark data sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genloom.core import hookimpl, records
from genloom.core.constraints import Fraction, PositiveInt

PAPER = records.Paper(
    title="Is Mamba Effective for Time Series Forecasting?",
    year=2024,
    arxiv="2403.11144",
    url="https://github.com/wzhwzhwzh0921/S-D-Mamba",
)


@dataclass
class SMambaConfig:
    """Encoder over variate tokens: bidirectional Mamba across variates, then a per-token FFN."""

    d_model: PositiveInt = 32
    """Width of a variate token; published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 2
    """Encoder layers (each: bidirectional Mamba + FFN)."""
    d_ff: PositiveInt | None = None
    """Hidden width of the per-token feed-forward network (None: 2 * d_model)."""
    dropout: Fraction = 0.1
    """Dropout on the mixer and FFN outputs."""
    mamba: str = "mamba"
    """Registry backbone used for each direction (one causal block each)."""
    mamba_options: dict = field(default_factory=lambda: {"d_state": 16, "d_conv": 2, "expand": 1})
    """Extra fields for each direction's backbone node (d_model and n_layers: 1 are set here)."""

    def __post_init__(self):
        if self.d_model < 1 or self.n_layers < 1:
            raise ValueError("d_model and n_layers must be at least 1")
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"d_ff must be at least 1, got {self.d_ff}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        reserved = {"name", "d_model", "n_layers"} & set(self.mamba_options)
        if reserved:
            raise ValueError(f"mamba_options must not set {', '.join(sorted(reserved))} (s-mamba sets them)")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "s-mamba",
            "genloom.plugins.s_mamba.model:build",
            SMambaConfig,
            "S-Mamba encoder: bidirectional Mamba across variate tokens + per-token FFN.",
            PAPER,
        )
    ]
