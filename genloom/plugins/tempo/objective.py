"""TEMPO's objective: the ``mse`` forecasting objective plus the prompt pool's key-matching loss."""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.plugins.tempo import TempoObjectiveConfig
from genloom.toolkit.forecasting import ForecastOutputs


class TempoObjective(ForecastOutputs, Objective):
    def __init__(self, forecast_objective: Objective, key_weight: float):
        super().__init__()
        self.forecast_objective = forecast_objective
        self.pattern = forecast_objective.pattern
        self.key_weight = key_weight

    def predict(self, model, x: torch.Tensor) -> torch.Tensor:
        return self.forecast_objective.predict(model, x)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        out = self.forecast_objective.loss(model, batch)
        matching = model.backbone.last_matching_loss
        if matching is None:
            raise ValueError("the tempo objective needs the tempo backbone (its prompt pool's matching loss)")
        out["key_matching"] = matching.detach()
        out["loss"] = out["loss"] + self.key_weight * matching
        return out


def build(config: TempoObjectiveConfig, ctx) -> TempoObjective:
    forecast = ctx.build("objective", {"name": "mse"}, path=f"{ctx.current or 'objective'}.forecast")
    return TempoObjective(forecast, config.key_weight)
