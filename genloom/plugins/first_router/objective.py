"""FiRST's training objective: the next-token loss (the registry's ``next-token``) plus
``skip_weight`` times the mean router probability, the expected fraction of layers run."""

from __future__ import annotations

import torch

from genloom.core.model import Objective


class FirstRouterObjective(Objective):
    def __init__(self, base: Objective, skip_weight: float):
        super().__init__()
        self.base = base
        self.pattern = base.pattern
        self.skip_weight = skip_weight

    def loss(self, model, batch):
        out = dict(self.base.loss(model, batch))
        gates = getattr(model.backbone, "last_gates", [])
        if gates:
            run = torch.stack([g.mean() for g in gates]).mean()
            out["layers_run"] = run.detach()
            out["loss"] = out["loss"] + self.skip_weight * run
        return out

    def metrics(self, out, batch):
        base = self.base.metrics(out, batch)
        return {**base, **({"layers_run": float(out["layers_run"])} if "layers_run" in out else {})}


def build(config, ctx) -> FirstRouterObjective:
    return FirstRouterObjective(ctx.build("objective", {"name": "next-token"}, path="objective.<next-token>"), config.skip_weight)
