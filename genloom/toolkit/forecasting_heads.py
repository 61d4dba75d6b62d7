"""Probabilistic forecasting heads (Gaussian, mixture, quantile) and the ``nll`` objective.

A probabilistic head is a point ``forecast`` head whose projection gives the P parameters of a
distribution over each forecast value instead of the value itself: ``Linear(lookback, d_model)``
embeds a token, ``Linear(d_model, horizon * P)`` maps its hidden state to raw parameters
(B, N, horizon * P). ``head.distribution(raw, decode, layout)`` turns them into a
:class:`ForecastDistribution` over the forecast window (B, horizon, V) in the data's scale:

- ``decode(t)`` is the series tokenizer's map of a token-layout tensor (B, N, horizon) to the
  forecast window, undoing the tokenizer's per-window normalisation; it must be affine and
  increasing in each value (the ``variate`` tokenizer's ``t * std + mean`` is), so locations and
  quantiles go through it and a scale s at location m becomes ``decode(m + s) - decode(m)``;
- ``layout(t)`` is the same re-arrangement without the normalisation (for mixture weights).

The ``nll`` objective trains any of them by the distribution's own loss on the target window
(negative log-likelihood; the pinball loss for the quantile head) and reports the MSE and MAE of
the distribution's mean, so the point metrics stay comparable with the ``mse`` objective.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Head, Objective
from genloom.core.pattern import AttentionPattern
from genloom.toolkit.forecasting import ForecastOutputs
from genloom.toolkit.forecasting_config import (
    GaussianHeadConfig,
    MixtureHeadConfig,
    NllObjectiveConfig,
    QuantileHeadConfig,
    TimeStepTokenizerConfig,
)


def _identity_decode(t: torch.Tensor) -> torch.Tensor:
    return t


# ---------------------------------------------------------------------------------------------
# Distributions over a forecast window (B, H, V)
# ---------------------------------------------------------------------------------------------

class ForecastDistribution:
    """A distribution over each forecast value: ``mean``, ``loss(y)``, ``quantile(levels)``, ``sample(n)``."""

    #: Standard deviation of a Gaussian forecast (used for the closed-form CRPS), else None.
    std: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def quantile(self, levels) -> torch.Tensor:
        """(Q, *shape) quantiles at ``levels``."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, *shape) independent draws per value."""
        raise NotImplementedError


class GaussianForecast(ForecastDistribution):
    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        self.loc, self.std = loc, scale

    @property
    def mean(self):
        return self.loc

    def loss(self, y):
        z = (y - self.loc) / self.std
        return (0.5 * z ** 2 + torch.log(self.std) + 0.5 * math.log(2 * math.pi)).mean()

    def quantile(self, levels):
        q = torch.as_tensor(list(levels), dtype=self.loc.dtype, device=self.loc.device)
        z = math.sqrt(2.0) * torch.erfinv(2 * q - 1)
        return self.loc[None] + z.view(-1, *([1] * self.loc.dim())) * self.std[None]

    def sample(self, n, generator=None):
        noise = torch.randn((n, *self.loc.shape), generator=generator, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc[None] + noise * self.std[None]


class MixtureForecast(ForecastDistribution):
    """K Gaussian components per value: weights (..., K), locations (..., K), scales (..., K)."""

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor):
        self.logits, self.loc, self.scale = logits, loc, scale

    @property
    def weights(self):
        return torch.softmax(self.logits, dim=-1)

    @property
    def mean(self):
        return (self.weights * self.loc).sum(-1)

    def log_prob(self, y):
        z = (y[..., None] - self.loc) / self.scale
        component = -0.5 * z ** 2 - torch.log(self.scale) - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + component, dim=-1)

    def loss(self, y):
        return -self.log_prob(y).mean()

    def cdf(self, y):
        return (self.weights * 0.5 * (1 + torch.erf((y[..., None] - self.loc) / (self.scale * math.sqrt(2))))).sum(-1)

    def quantile(self, levels, iterations: int = 60):
        """Bisection on the mixture's CDF (exact to ~2^-60 of the bracket)."""
        spread = 8 * self.scale.max(-1).values
        out = []
        for q in levels:
            low, high = self.loc.min(-1).values - spread, self.loc.max(-1).values + spread
            for _ in range(iterations):
                mid = 0.5 * (low + high)
                below = self.cdf(mid) < q
                low, high = torch.where(below, mid, low), torch.where(below, high, mid)
            out.append(0.5 * (low + high))
        return torch.stack(out)

    def sample(self, n, generator=None):
        shape = self.loc.shape[:-1]
        flat_w = self.weights.reshape(-1, self.loc.shape[-1])
        pick = torch.multinomial(flat_w, n, replacement=True, generator=generator).T.reshape(n, *shape)
        loc = torch.gather(self.loc.expand(n, *self.loc.shape), -1, pick[..., None])[..., 0]
        scale = torch.gather(self.scale.expand(n, *self.scale.shape), -1, pick[..., None])[..., 0]
        noise = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        return loc + noise * scale


class QuantileForecast(ForecastDistribution):
    """Non-crossing quantiles (Q, ...) at increasing ``levels``; linear interpolation between them."""

    def __init__(self, levels, values: torch.Tensor):
        self.levels = [float(q) for q in levels]
        self.values = values

    @property
    def mean(self):
        """The median level if it is predicted, else the average of the quantiles."""
        if 0.5 in self.levels:
            return self.values[self.levels.index(0.5)]
        return self.values.mean(0)

    def loss(self, y):
        return pinball_loss(self.values, self.levels, y)

    def quantile(self, levels):
        return torch.stack([self._interpolate(float(q)) for q in levels])

    def _interpolate(self, q):
        levels = self.levels
        if q <= levels[0]:
            return self.values[0]
        if q >= levels[-1]:
            return self.values[-1]
        i = max(j for j, level in enumerate(levels) if level <= q)
        if levels[i] == q:
            return self.values[i]
        w = (q - levels[i]) / (levels[i + 1] - levels[i])
        return (1 - w) * self.values[i] + w * self.values[i + 1]

    def sample(self, n, generator=None):
        """Inverse-CDF draws from the piecewise-linear quantile function (flat beyond the outer levels)."""
        u = torch.rand((n, *self.values.shape[1:]), generator=generator, dtype=self.values.dtype, device=self.values.device)
        levels = torch.as_tensor(self.levels, dtype=self.values.dtype, device=self.values.device)
        index = torch.searchsorted(levels, u.reshape(n, -1).T.contiguous()).T.reshape(u.shape).clamp(1, len(self.levels) - 1)
        lo_level, hi_level = levels[index - 1], levels[index]
        flat = self.values.reshape(len(self.levels), -1)
        idx = index.reshape(n, -1)
        lo = torch.gather(flat, 0, idx - 1).reshape(u.shape)
        hi = torch.gather(flat, 0, idx).reshape(u.shape)
        w = ((u - lo_level) / (hi_level - lo_level)).clamp(0, 1)
        return lo + w * (hi - lo)


def pinball_loss(quantiles: torch.Tensor, levels, y: torch.Tensor) -> torch.Tensor:
    """Mean over levels and values of max(q (y - p), (q - 1)(y - p)) for quantile predictions (Q, ...)."""
    q = torch.as_tensor(list(levels), dtype=quantiles.dtype, device=quantiles.device).view(-1, *([1] * y.dim()))
    diff = y[None] - quantiles
    return torch.maximum(q * diff, (q - 1) * diff).mean()


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------

class ProbabilisticForecastHead(Head):
    """Token features -> d_model (embed); hidden state -> horizon x P raw parameters."""

    num_parameters = 1

    def __init__(self, lookback: int, horizon: int, d_model: int, min_scale: float = 1e-3):
        super().__init__()
        self.lookback, self.horizon, self.d_model, self.min_scale = lookback, horizon, d_model, min_scale
        self.embedding = nn.Linear(lookback, d_model)
        self.projection = nn.Linear(d_model, horizon * self.num_parameters)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[-1] != self.lookback:
            raise ValueError(f"forecast head expects tokens with {self.lookback} features (the lookback), got {tuple(ids.shape)}")
        return self.embedding(ids.to(self.embedding.weight.dtype))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.projection(h)

    def parameters_of(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, N, horizon * P) -> (B, N, horizon, P)."""
        return raw.reshape(*raw.shape[:-1], self.horizon, self.num_parameters)

    def distribution(self, raw: torch.Tensor, decode=None, layout=None) -> ForecastDistribution:
        raise NotImplementedError

    def loss(self, outputs, targets, mask=None, weight=None):
        """The distribution's loss of ``targets`` given in token layout (B, N, horizon)."""
        return self.distribution(outputs).loss(targets)

    def sample(self, logits, generator=None):
        """One draw per value, in token layout."""
        return self.distribution(logits).sample(1, generator)[0]

    def _scale(self, raw_scale):
        return F.softplus(raw_scale) + self.min_scale


def _decoded_scale(decode, loc_raw, scale_raw, loc):
    # an affine increasing decode maps a scale s at location m to decode(m + s) - decode(m)
    return (decode(loc_raw + scale_raw) - loc).clamp_min(torch.finfo(loc.dtype).tiny)


class GaussianHead(ProbabilisticForecastHead):
    num_parameters = 2

    def distribution(self, raw, decode=None, layout=None):
        decode = decode or _identity_decode
        p = self.parameters_of(raw)
        loc_raw, scale_raw = p[..., 0], self._scale(p[..., 1])
        loc = decode(loc_raw)
        return GaussianForecast(loc, _decoded_scale(decode, loc_raw, scale_raw, loc))


class MixtureHead(ProbabilisticForecastHead):
    def __init__(self, lookback, horizon, d_model, min_scale=1e-3, components: int = 3):
        self.num_parameters = 3 * components
        self.components = components
        super().__init__(lookback, horizon, d_model, min_scale)
        with torch.no_grad():  # spread the initial component locations so they do not start identical
            bias = self.projection.bias.view(horizon, 3, components)
            bias[:, 1] = torch.linspace(-1.0, 1.0, components) if components > 1 else 0.0

    def distribution(self, raw, decode=None, layout=None):
        decode = decode or _identity_decode
        layout = layout or _identity_decode
        p = self.parameters_of(raw).reshape(*raw.shape[:-1], self.horizon, 3, self.components)
        logits, loc_raw, scale_raw = p[..., 0, :], p[..., 1, :], self._scale(p[..., 2, :])
        per_k = lambda f, t: torch.stack([f(t[..., k]) for k in range(self.components)], dim=-1)  # noqa: E731
        loc = per_k(decode, loc_raw)
        scale = (per_k(decode, loc_raw + scale_raw) - loc).clamp_min(torch.finfo(loc.dtype).tiny)
        return MixtureForecast(per_k(layout, logits), loc, scale)


class QuantileHead(ProbabilisticForecastHead):
    def __init__(self, lookback, horizon, d_model, min_scale=1e-3, levels=(0.1, 0.5, 0.9)):
        self.levels = [float(q) for q in levels]
        self.num_parameters = len(self.levels)
        super().__init__(lookback, horizon, d_model, min_scale)

    def distribution(self, raw, decode=None, layout=None):
        decode = decode or _identity_decode
        p = self.parameters_of(raw)
        # non-crossing by construction: the lowest quantile, then positive increments
        steps = torch.cat([p[..., :1], F.softplus(p[..., 1:]) + self.min_scale], dim=-1)
        values = torch.cumsum(steps, dim=-1)
        return QuantileForecast(self.levels, torch.stack([decode(values[..., i]) for i in range(len(self.levels))]))


def build_gaussian(config: GaussianHeadConfig, ctx=None) -> GaussianHead:
    config.bind(ctx)
    return GaussianHead(config.lookback, config.horizon, config.d_model, config.min_scale)


def build_mixture(config: MixtureHeadConfig, ctx=None) -> MixtureHead:
    config.bind(ctx)
    return MixtureHead(config.lookback, config.horizon, config.d_model, config.min_scale, config.components)


def build_quantile(config: QuantileHeadConfig, ctx=None) -> QuantileHead:
    config.bind(ctx)
    return QuantileHead(config.lookback, config.horizon, config.d_model, config.min_scale, config.levels)


# ---------------------------------------------------------------------------------------------
# Time-step tokens
# ---------------------------------------------------------------------------------------------

class TimeStepTokenizer:
    """``encode(x (B, L, V)) -> (tokens (B, L, V), stats)``; ``decode(outputs (B, N, V), stats)`` keeps the last ``horizon`` tokens.

    With ``instance_norm`` each variate of each window is standardised by its own lookback mean
    and std, undone on the forecast. A backbone that forecasts from time-step tokens (Autoformer,
    Informer, ...) returns at least ``horizon`` tokens whose last ``horizon`` are the future steps.
    """

    series = True  # the series-tokenizer contract of the ``mse``/``nll`` objectives
    vocab_size = 0
    eos_id = None

    def __init__(self, horizon: int, instance_norm: bool = True, eps: float = 1e-5):
        self.horizon, self.instance_norm, self.eps = horizon, instance_norm, eps

    def encode(self, x: torch.Tensor):
        if x.dim() != 3:
            raise ValueError(f"time-step tokenizer expects windows (B, lookback, V), got shape {tuple(x.shape)}")
        if not self.instance_norm:
            return x, None
        mean = x.mean(dim=1, keepdim=True)
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)
        return (x - mean) / std, (mean, std)

    def decode(self, outputs: torch.Tensor, stats=None) -> torch.Tensor:
        if outputs.shape[1] < self.horizon:
            raise ValueError(f"time-step tokenizer needs at least {self.horizon} output tokens (the horizon), got {outputs.shape[1]}")
        forecast = outputs[:, -self.horizon:]
        if stats is not None:
            mean, std = stats
            forecast = forecast * std + mean
        return forecast


def build_time_step_tokenizer(config: TimeStepTokenizerConfig, ctx=None) -> TimeStepTokenizer:
    if config.horizon is None:
        config.bind(ctx)
    return TimeStepTokenizer(config.horizon, config.instance_norm, config.eps)


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------

def encode_series(tokenizer, x):
    """``(tokens, stats)`` from a series tokenizer (``series = True``), or plain variate tokens."""
    if tokenizer is not None and getattr(tokenizer, "series", False):
        return tokenizer.encode(x)
    return x.transpose(1, 2), None


def decode_series(tokenizer, outputs, stats):
    if tokenizer is not None and getattr(tokenizer, "series", False):
        return tokenizer.decode(outputs, stats)
    return outputs.transpose(1, 2)


class NllObjective(ForecastOutputs, Objective):
    """The probabilistic head's loss of the target window; MSE/MAE of its mean as metrics."""

    def __init__(self, pattern: str = "full"):
        super().__init__()
        self.pattern = AttentionPattern(pattern)

    def predict_distribution(self, model, x: torch.Tensor) -> ForecastDistribution:
        """The forecast distribution over (B, horizon, V) for windows ``x`` (B, lookback, V)."""
        if not hasattr(model.head, "distribution"):
            raise ValueError("the nll objective needs a probabilistic head (gaussian, mixture or quantile)")
        tokens, stats = encode_series(model.tokenizer, x)
        raw = model(tokens, pattern=self.pattern)
        return model.head.distribution(raw, decode=lambda t: decode_series(model.tokenizer, t, stats),
                                       layout=lambda t: decode_series(model.tokenizer, t, None))

    def predict(self, model, x: torch.Tensor) -> torch.Tensor:
        return self.predict_distribution(model, x).mean

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        dist = self.predict_distribution(model, batch["x"])
        target = batch["y"].to(dist.mean.dtype)
        err = dist.mean.detach() - target
        return {"loss": dist.loss(target), "mse": (err ** 2).mean(), "mae": err.abs().mean()}


def build_nll_objective(config: NllObjectiveConfig, ctx=None) -> NllObjective:
    return NllObjective(config.pattern)
