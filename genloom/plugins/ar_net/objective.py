"""AR-Net's training objective: forecast MSE + lambda * R(first-layer weights).

R(w) = mean_i ( 2 / (1 + exp(-c1 * |w_i|^(1/c2))) - 1 ): zero at w = 0, tending to 1 for large
|w|, so it counts (softly) the non-zero coefficients without shrinking large ones much.
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.plugins.ar_net import ArNetObjectiveConfig
from genloom.toolkit.forecasting import ForecastOutputs


def sparsity_regularizer(weights: torch.Tensor, c1: float = 3.0, c2: float = 3.0) -> torch.Tensor:
    """AR-Net's R(w): the mean over all weights of 2 / (1 + exp(-c1 |w|^(1/c2))) - 1."""
    # |w| is clamped at 1e-12 so that the gradient of |w|^(1/c2), infinite at 0, stays finite (0 there)
    magnitude = weights.abs().clamp_min(1e-12).pow(1.0 / c2)
    return (2.0 / (1.0 + torch.exp(-c1 * magnitude)) - 1.0).mean()


def regularization_strength(sparsity: float | None, c_lambda: float = 0.1) -> float:
    """lambda = c_lambda * (1/s - 1) for an expected share s of non-zero coefficients."""
    if sparsity is None:
        return 0.0
    return c_lambda * (1.0 / sparsity - 1.0)


class ArNetObjective(ForecastOutputs, Objective):
    """``mse`` (from the registry) plus the sparsity regulariser on ``model.head.ar_layer.weight``."""

    def __init__(self, forecast_objective: Objective, lam: float, c1: float = 3.0, c2: float = 3.0, delay_steps: int = 0, ramp_steps: int = 0):
        super().__init__()
        self.forecast_objective = forecast_objective
        self.pattern = forecast_objective.pattern
        self.lam, self.c1, self.c2 = lam, c1, c2
        self.delay_steps, self.ramp_steps = delay_steps, ramp_steps
        # training-mode loss calls so far (saved with the model, so a resumed run keeps its schedule)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        """lambda at this point of training: 0 during the delay, then a linear ramp to its full value."""
        past = int(self.steps_seen) - self.delay_steps
        if past < 0:
            return 0.0
        if self.ramp_steps:
            return self.lam * min(1.0, (past + 1) / self.ramp_steps)
        return self.lam

    def predict(self, model, x: torch.Tensor) -> torch.Tensor:
        return self.forecast_objective.predict(model, x)

    def regularizer(self, model) -> torch.Tensor:
        layer = getattr(model.head, "ar_layer", None)
        if layer is None:
            raise ValueError("the ar-net objective regularises model.head.ar_layer; use the ar-net head")
        return sparsity_regularizer(layer.weight, self.c1, self.c2)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        out = self.forecast_objective.loss(model, batch)
        reg = self.regularizer(model)
        lam = self.current_lambda()
        out["regularizer"] = reg.detach()
        out["lambda"] = torch.tensor(lam)
        if lam:
            out["loss"] = out["loss"] + lam * reg
        if self.training and torch.is_grad_enabled():
            self.steps_seen += 1
        return out



def build(config: ArNetObjectiveConfig, ctx) -> ArNetObjective:
    forecast = ctx.build("objective", {"name": "mse", "pattern": config.pattern}, path=f"{ctx.current or 'objective'}.forecast")
    return ArNetObjective(forecast, config.lam, config.c1, config.c2, config.delay_steps, config.ramp_steps)
