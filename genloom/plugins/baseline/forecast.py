"""Shared forecasting pieces: the ``forecast`` head, the ``mse`` objective, baselines and metrics.

Every forecaster (iTransformer, S-Mamba, AR-Net, ...) is assembled from the same kinds as a
language model; only the token space is continuous:

- a *series tokenizer* turns a batch of windows ``x`` (B, lookback, V) into tokens (B, N, F) and
  the head's outputs back into a forecast (B, horizon, V). The contract is
  ``tokens, stats = tokenizer.encode(x)`` and ``tokenizer.decode(outputs, stats)``; itransformer's
  ``variate`` tokenizer makes one token per variate (N = V, F = lookback). Without such a
  tokenizer the objective falls back to variate tokens without normalisation;
- the ``forecast`` head embeds a token's F features into d_model (``Linear(F, d_model)``) and
  projects a hidden state to the horizon (``Linear(d_model, horizon)``); its distribution is a
  point forecast, so ``loss`` is the mean squared error and ``sample`` returns the forecast;
- the ``mse`` objective runs tokenizer -> head -> backbone -> head -> tokenizer with the ``full``
  pattern (variate tokens see each other) and scores the whole target window (MSE, MAE beside it).

Baselines every forecaster is compared with on the test split: :func:`seasonal_naive` (repeat
the last season of the lookback) and :class:`LinearBaseline` (ordinary least squares from the
lookback to the horizon, one map shared by all variates, with an intercept). :func:`evaluate`
gives MSE and MAE on the data set's normalised scale (the usual convention of the forecasting
literature); :func:`fit_forecaster` is a small minibatch training loop with early stopping
on the validation split, used by tests and docs (``genloom train`` uses Lightning instead).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from genloom.core.model import Head, Objective
from genloom.core.pattern import AttentionPattern
from genloom.plugins.baseline.series_config import ForecastHeadConfig, MseObjectiveConfig
from genloom.toolkit.forecasting import ForecastOutputs


# ---------------------------------------------------------------------------------------------
# Head and objective
# ---------------------------------------------------------------------------------------------

class ForecastHead(Head):
    """Token features -> d_model (embed); hidden state -> horizon (point forecast)."""

    def __init__(self, lookback: int, horizon: int, d_model: int, bias: bool = True):
        super().__init__()
        self.lookback, self.horizon, self.d_model = lookback, horizon, d_model
        self.embedding = nn.Linear(lookback, d_model, bias=bias)
        self.projection = nn.Linear(d_model, horizon, bias=bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[-1] != self.lookback:
            raise ValueError(f"forecast head expects tokens with {self.lookback} features (the lookback), got {tuple(ids.shape)}")
        return self.embedding(ids.to(self.embedding.weight.dtype))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.projection(h)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        err = (outputs.float() - targets.float()) ** 2
        if mask is None:
            return err.mean()
        mask = mask.to(err.dtype).expand_as(err)
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A point forecast: the outputs themselves."""
        return logits


def build_forecast_head(config: ForecastHeadConfig, ctx=None) -> ForecastHead:
    if config.lookback is None or config.horizon is None or config.d_model is None:
        config.bind(ctx)
    return ForecastHead(config.lookback, config.horizon, config.d_model, bias=config.bias)


def variate_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, L, V) windows -> (B, V, L) tokens: one token per variate (no normalisation)."""
    return x.transpose(1, 2)


def encode_series(tokenizer, x: torch.Tensor):
    """``(tokens, stats)`` from a series tokenizer, or plain variate tokens if it is not one."""
    if tokenizer is not None and getattr(tokenizer, "series", False):
        return tokenizer.encode(x)
    return variate_tokens(x), None


def decode_series(tokenizer, outputs: torch.Tensor, stats) -> torch.Tensor:
    if tokenizer is not None and getattr(tokenizer, "series", False):
        return tokenizer.decode(outputs, stats)
    return outputs.transpose(1, 2)


class MseObjective(ForecastOutputs, Objective):
    """Mean squared error of the forecast window; MAE as a metric (``genloom generate``/``evaluate`` from the harness)."""

    def __init__(self, pattern: str = "full"):
        super().__init__()
        self.pattern = AttentionPattern(pattern)

    def predict(self, model, x: torch.Tensor) -> torch.Tensor:
        """Forecast (B, horizon, V) for windows ``x`` (B, lookback, V)."""
        tokens, stats = encode_series(model.tokenizer, x)
        outputs = model(tokens, pattern=self.pattern)
        return decode_series(model.tokenizer, outputs, stats)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        prediction = self.predict(model, batch["x"])
        target = batch["y"].to(prediction.dtype)
        mse = model.head.loss(prediction, target)
        mae = (prediction.detach() - target).abs().mean()
        return {"loss": mse, "mse": mse.detach(), "mae": mae}



def build_mse_objective(config: MseObjectiveConfig, ctx=None) -> MseObjective:
    return MseObjective(config.pattern)


# ---------------------------------------------------------------------------------------------
# Baselines and metrics
# ---------------------------------------------------------------------------------------------

def seasonal_naive(x: torch.Tensor, horizon: int, season: int = 1) -> torch.Tensor:
    """Repeat the last ``season`` steps of the lookback: y[t] = x[L - season + (t mod season)]."""
    lookback = x.shape[1]
    if not 1 <= season <= lookback:
        raise ValueError(f"season must be between 1 and the lookback {lookback}, got {season}")
    index = lookback - season + torch.arange(horizon, device=x.device) % season
    return x[:, index]


class LinearBaseline:
    """Least-squares linear forecaster: y = W x + b per variate, one (W, b) shared by all variates.

    ``ridge`` adds ``ridge * ||W||^2`` (0: ordinary least squares, the minimum-norm solution of
    ``torch.linalg.lstsq``). ``instance_norm`` fits and applies the map to each window standardised by its own lookback
    mean/std (the "RLinear" baseline of the forecasting literature); off by default.
    """

    def __init__(self, ridge: float = 0.0, instance_norm: bool = False, eps: float = 1e-5):
        self.ridge = ridge
        self.instance_norm = instance_norm
        self.eps = eps
        self.weight: torch.Tensor | None = None  # (H, L)
        self.bias: torch.Tensor | None = None  # (H,)

    def _stats(self, x: torch.Tensor):
        mean = x.mean(dim=1, keepdim=True)
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)
        return mean, std

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> "LinearBaseline":
        x, y = x.double(), y.double()
        if self.instance_norm:
            mean, std = self._stats(x)
            x, y = (x - mean) / std, (y - mean) / std
        inputs = x.transpose(1, 2).reshape(-1, x.shape[1])  # (N*V, L)
        targets = y.transpose(1, 2).reshape(-1, y.shape[1])  # (N*V, H)
        design = torch.cat([inputs, torch.ones(inputs.shape[0], 1, dtype=inputs.dtype)], dim=1)
        if self.ridge > 0:
            penalty = self.ridge * torch.eye(design.shape[1], dtype=design.dtype)
            penalty[-1, -1] = 0.0  # the intercept is not penalised
            solution = torch.linalg.solve(design.T @ design + penalty, design.T @ targets)
        else:
            # SVD-based minimum-norm solution: with instance_norm the lags of a window sum to 0, so the
            # design is rank-deficient and only the minimum-norm solution is unique and reproducible
            solution = torch.linalg.lstsq(design.cpu(), targets.cpu(), driver="gelsd").solution.to(design.device)
        self.weight = solution[:-1].T.float()
        self.bias = solution[-1].float()
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.instance_norm:
            mean, std = self._stats(x)
            return (torch.einsum("blv,hl->bhv", (x - mean) / std, self.weight) + self.bias[None, :, None]) * std + mean
        return torch.einsum("blv,hl->bhv", x, self.weight) + self.bias[None, :, None]


def metrics(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MSE and MAE over every forecast value."""
    err = prediction.double() - target.double()
    return {"mse": float((err ** 2).mean()), "mae": float(err.abs().mean())}


def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], data, split: str = "test", batch_size: int = 256) -> dict[str, float]:
    """MSE/MAE of ``predict(x) -> (B, H, V)`` over all windows of ``split`` (normalised scale)."""
    x, y = data.load(split).tensors()
    outputs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            outputs.append(predict(x[start:start + batch_size]).float())
    return metrics(torch.cat(outputs), y)


def baseline_scores(data, split: str = "test", instance_norm_linear: bool = False) -> dict[str, dict[str, float]]:
    """Seasonal-naive and least-squares linear scores on ``split`` (the linear map is fitted on train).

    With ``instance_norm_linear`` the scores of the instance-normalised linear map
    ("linear+norm") are added.
    """
    horizon, season = data.info["horizon"], data.info["season"]
    season = min(season, data.info["lookback"])
    train = data.load("train").tensors()
    scores = {
        "seasonal-naive": evaluate(lambda x: seasonal_naive(x, horizon, season), data, split),
        "linear": evaluate(LinearBaseline().fit(*train), data, split),
    }
    if instance_norm_linear:
        scores["linear+norm"] = evaluate(LinearBaseline(instance_norm=True).fit(*train), data, split)
    return scores


def model_predictor(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> forecast`` for an assembled model whose objective can ``predict``."""
    objective = model.objective

    def predict(x):
        was_training = model.training
        model.eval()
        try:
            return objective.predict(model, x)
        finally:
            model.train(was_training)

    return predict


def fit_forecaster(model, data, *, steps: int = 500, lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 32,
                   eval_every: int = 25, patience: int | None = None, seed: int = 0, log: list | None = None,
                   select_best: bool = True) -> dict[str, float]:
    """Train ``model`` (an assembled forecaster) with AdamW and a cosine learning-rate decay.

    With ``select_best`` the weights of the best validation MSE are kept (early stopping), else
    the final ones. A plain loop for tests and scripts (``genloom train`` is the Lightning path).
    Returns the best validation scores and the step they were reached at (or the final scores).
    """
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = data.load("train").tensors()
    has_val = len(data.load("val")) > 0
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
    best = {"mse": float("inf"), "step": 0}
    best_state = None
    since_best = 0
    for step in range(1, steps + 1):
        model.train()
        index = torch.randint(0, x_train.shape[0], (min(batch_size, x_train.shape[0]),), generator=generator)
        out = model.loss({"x": x_train[index], "y": y_train[index]})
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        schedule.step()
        if has_val and (step % eval_every == 0 or step == steps):
            scores = evaluate(model_predictor(model), data, "val")
            if log is not None:
                log.append({"step": step, "train_loss": float(out["loss"]), **{f"val_{k}": v for k, v in scores.items()}})
            if scores["mse"] < best["mse"]:
                best = {**scores, "step": step}
                best_state = copy.deepcopy(model.state_dict())
                since_best = 0
            else:
                since_best += 1
                if patience is not None and since_best >= patience:
                    break
    if not select_best:
        model.eval()
        final = evaluate(model_predictor(model), data, "val") if has_val else {}
        return {**final, "step": step}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best
