"""GPD: Generative Pre-trained Diffusion for zero-shot time-series forecasting (2024).

What the paper does: a plain MLP diffusion model (DDPM) is trained *unconditionally* on windows
of time series; forecasting needs no training for the task and no tuning: the history is used as a
prompt while sampling. At every reverse step the part of the window that is known (the history)
is overwritten by the observed history noised to that step's level, and only the unknown part
(the future) comes from the model's denoising step, so the sample is pulled towards continuations
consistent with the history. Forecasts are sample paths; their mean is the point forecast.

What this implementation does:

- head ``gpd-ts``: the bridge between a window and the hidden width: embeds a noisy window of W
  values together with a sinusoidal embedding of the diffusion step (``Linear(W + 32, d_model)``)
  and maps hidden states back to the predicted noise (``Linear(d_model, W)``);
- backbone ``gpd-mlp``: ``n_layers`` residual MLP blocks (LayerNorm, Linear, SiLU, Linear);
- objective ``gpd-ts``: the DDPM noise-prediction loss on windows of each variate on its own
  (channel independence), each window standardised by its own mean/std; ``forecast(model, x,
  horizon)`` imputes the future with the history-overwriting scheme (the conditioning above, as
  in RePaint): a window holds the last ``W - stride`` known values and ``stride`` unknown ones,
  and rounds repeat until the horizon is covered, so any horizon works; the known part of the
  final sample is the given history exactly. ``predict_distribution`` returns the sample paths
  (the forecasting harness scores their CRPS), ``predict`` their mean.

What it chooses (the exact conditioning scheme of the paper was not confirmed): the
history-overwriting imputation of RePaint without its resampling (jump-back) loops; a linear
beta schedule; windows standardised by the mean/std of their known part; toy sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(
    title="Generative Pre-Trained Diffusion Paradigm for Zero-Shot Time Series Forecasting",
    year=2024,
    arxiv="2406.02212",
)

_P = "genloom.plugins.gpd_ts"


@dataclass
class GpdHeadConfig:
    """A noisy window of W values and its diffusion step in, predicted noise out."""

    window: int | None = None
    """W: values per window (None: the data set's lookback)."""
    d_model: int | None = None
    """Hidden width (None: the backbone's)."""

    def __post_init__(self):
        for name in ("window", "d_model"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"{name} must be at least 2, got {value}")

    def bind(self, ctx) -> None:
        if self.window is None:
            self.window = ctx.lookback
        if self.d_model is None:
            self.d_model = ctx.d_model


@dataclass
class GpdMlpConfig:
    """Residual MLP blocks (the paper's straightforward MLP denoiser)."""

    d_model: int = 128
    """Hidden width; published as ``ctx.d_model``."""
    n_layers: int = 3
    """Residual blocks."""

    def __post_init__(self):
        if self.d_model < 1 or self.n_layers < 1:
            raise ValueError(f"d_model and n_layers must be at least 1, got {self.d_model}, {self.n_layers}")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)


@dataclass
class GpdObjectiveConfig:
    """Unconditional DDPM training; forecasting by history-overwriting imputation."""

    steps: int = 100
    """Diffusion steps T."""
    beta_start: float = 1e-4
    """First beta of the linear schedule."""
    beta_end: float = 0.05
    """Last beta of the linear schedule."""
    stride: int | None = None
    """Unknown values per imputation round (None: a quarter of the window)."""
    num_samples: int = 32
    """Sample paths per forecast."""
    horizon: int | None = None
    """Default forecast horizon of ``predict`` (None: the data set's horizon)."""

    def __post_init__(self):
        if self.steps < 2:
            raise ValueError(f"steps must be at least 2, got {self.steps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be at least 1, got {self.stride}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")

    def bind(self, ctx) -> None:
        if self.horizon is None:
            self.horizon = ctx.get("horizon", 1)


@hookimpl
def genloom_heads():
    return [records.head("gpd-ts", f"{_P}.model:build_head", GpdHeadConfig,
                         "GPD: noisy window + step embedding in, predicted noise out.", PAPER)]


@hookimpl
def genloom_backbones():
    return [records.backbone("gpd-mlp", f"{_P}.model:build_backbone", GpdMlpConfig,
                             "GPD's MLP denoiser: residual MLP blocks.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("gpd-ts", f"{_P}.model:build_objective", GpdObjectiveConfig,
                              "Unconditional DDPM on windows; zero-shot forecasts by history-overwriting imputation.", PAPER)]
