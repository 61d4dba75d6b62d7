"""GPD's denoiser, DDPM training and zero-shot forecasting by imputation.

Forecasting one round, for a window whose first ``W - s`` values are known (mask m = 1) and
last s unknown, starting from x_T ~ N(0, I):

    for t = T .. 1:
        unknown  <- the DDPM step x_{t-1} ~ p(x_{t-1} | x_t) from the predicted noise
        known    <- sqrt(abar_{t-1}) x_known + sqrt(1 - abar_{t-1}) eps      (abar_0 = 1: exact at the end)
        x_{t-1}  <- m * known + (1 - m) * unknown

Rounds slide the window by s until the horizon is filled.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core.model import Backbone, Head, Objective
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.gpd_ts import GpdHeadConfig, GpdMlpConfig, GpdObjectiveConfig
from genloom.toolkit.forecasting import ForecastOutputs

STEP_FEATURES = 32


def step_embedding(t: torch.Tensor, dim: int = STEP_FEATURES) -> torch.Tensor:
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class GpdHead(Head):
    def __init__(self, window: int, d_model: int):
        super().__init__()
        self.window = window
        self.input = nn.Linear(window + STEP_FEATURES, d_model)
        self.output = nn.Linear(d_model, window)

    def embed_window(self, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(N, W) noisy windows and (N,) steps -> (N, 1, d_model)."""
        features = torch.cat([noisy, step_embedding(t).to(noisy.dtype)], dim=-1)
        return self.input(features)[:, None]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Windows (N, W) at step 0."""
        return self.embed_window(ids, torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(h)


class GpdMlp(Backbone):
    patterns = frozenset({"full"})

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.d_model = d_model
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 2 * d_model), nn.SiLU(), nn.Linear(2 * d_model, d_model)) for _ in range(n_layers))

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("gpd-mlp denoises whole windows; it has no incremental state")
        for block in self.blocks:
            h = h + block(h)
        return h

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("gpd-mlp denoises whole windows; it has no incremental state")


class SampleForecast:
    """Forecast sample paths (S, B, H, V): ``mean`` and ``sample(n)`` for the forecasting harness."""

    def __init__(self, draw):
        self._draw = draw
        self._mean_samples = None

    @property
    def mean(self):
        if self._mean_samples is None:
            self._mean_samples = self._draw(None)
        return self._mean_samples.mean(0)

    def sample(self, n: int, generator=None):
        return self._draw(n, generator)


class GpdObjective(ForecastOutputs, Objective):
    pattern = FULL

    def __init__(self, config: GpdObjectiveConfig):
        super().__init__()
        self.config = config
        betas = torch.linspace(config.beta_start, config.beta_end, config.steps, dtype=torch.float64)
        alphas = 1 - betas
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alpha_bar", torch.cumprod(alphas, 0), persistent=False)

    # -- denoiser and training -------------------------------------------------------------------
    def predicted_noise(self, model, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model.head(model.backbone(model.head.embed_window(noisy, t)))[:, 0]

    @staticmethod
    def windows(x: torch.Tensor):
        """(B, W, V) -> per-variate windows (B * V, W), each standardised by its own mean/std."""
        flat = x.transpose(1, 2).reshape(-1, x.shape[1])
        mean, std = flat.mean(1, keepdim=True), flat.std(1, keepdim=True, unbiased=False).clamp_min(1e-5)
        return (flat - mean) / std

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        x0 = self.windows(batch["x"])
        t = torch.randint(0, self.config.steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        abar = self.alpha_bar.to(x0)[t][:, None]
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        mse = ((self.predicted_noise(model, noisy, t) - noise) ** 2).mean()
        return {"loss": mse, "noise_mse": mse.detach()}

    # -- zero-shot forecasting -------------------------------------------------------------------
    @torch.no_grad()
    def impute(self, model, known: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill the positions where ``mask`` is 0 in windows (N, W); the known positions come back exactly."""
        betas, abar = self.betas.to(known), self.alpha_bar.to(known)
        x = torch.randn(known.shape, generator=generator, dtype=known.dtype, device=known.device)
        for step in range(self.config.steps - 1, -1, -1):
            t = torch.full((known.shape[0],), step, dtype=torch.long, device=known.device)
            eps = self.predicted_noise(model, x, t).to(known.dtype)
            mean = (x - betas[step] / (1 - abar[step]).sqrt() * eps) / (1 - betas[step]).sqrt()
            if step > 0:
                variance = betas[step] * (1 - abar[step - 1]) / (1 - abar[step])
                unknown = mean + variance.sqrt() * torch.randn(known.shape, generator=generator, dtype=known.dtype, device=known.device)
                noise = torch.randn(known.shape, generator=generator, dtype=known.dtype, device=known.device)
                noised_known = abar[step - 1].sqrt() * known + (1 - abar[step - 1]).sqrt() * noise
            else:
                unknown, noised_known = mean, known
            x = mask * noised_known + (1 - mask) * unknown
        return x

    @torch.no_grad()
    def forecast(self, model, x: torch.Tensor, horizon: int, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample paths (S, B, horizon, V) continuing windows x (B, L, V), L >= W - stride."""
        window = model.head.window
        stride = self.config.stride or max(1, window // 4)
        keep = window - stride
        if x.shape[1] < keep:
            raise ValueError(f"gpd-ts needs at least {keep} history steps (window {window} - stride {stride}), got {x.shape[1]}")
        batch, _, variates = x.shape
        dtype = model.head.output.weight.dtype
        series = x.to(dtype).transpose(1, 2).reshape(batch * variates, -1).repeat(num_samples, 1)  # (S*B*V, L)
        produced = 0
        mask = torch.cat([torch.ones(keep), torch.zeros(stride)]).to(series)
        while produced < horizon:
            history = series[:, -keep:]
            mean, std = history.mean(1, keepdim=True), history.std(1, keepdim=True, unbiased=False).clamp_min(1e-5)
            known = torch.cat([(history - mean) / std, torch.zeros(series.shape[0], stride, dtype=series.dtype)], dim=1)
            filled = self.impute(model, known, mask, generator) * std + mean
            series = torch.cat([series, filled[:, keep:]], dim=1)
            produced += stride
        future = series[:, x.shape[1]:x.shape[1] + horizon]
        return future.view(num_samples, batch, variates, horizon).transpose(2, 3).to(x.dtype)

    def predict_distribution(self, model, x: torch.Tensor) -> SampleForecast:
        horizon = self.config.horizon or 1
        return SampleForecast(lambda n, generator=None: self.forecast(model, x, horizon, n or self.config.num_samples, generator))

    def predict(self, model, x: torch.Tensor) -> torch.Tensor:
        return self.predict_distribution(model, x).mean


def build_head(config: GpdHeadConfig, ctx) -> GpdHead:
    if config.window is None or config.d_model is None:
        config.bind(ctx)
    return GpdHead(config.window, config.d_model)


def build_backbone(config: GpdMlpConfig, ctx) -> GpdMlp:
    ctx.set("d_model", config.d_model)
    return GpdMlp(config.d_model, config.n_layers)


def build_objective(config: GpdObjectiveConfig, ctx=None) -> GpdObjective:
    if config.horizon is None and ctx is not None:
        config.bind(ctx)
    return GpdObjective(config)
