"""The PFN head and objective.

One training step (``PfnObjective.loss``): a batch of tasks (B, N points) is cut at one context
size c drawn uniformly from ``[min_context, max_context]``; the sequence is
``[embed(x_1, y_1), ..., embed(x_c, y_c), embed(x_{c+1}), ..., embed(x_N)]``, the position-free
backbone runs it once under ``ContextQueryPattern(c)`` and the head's bar logits at the N - c query
positions score the hidden labels: ``loss = -mean log q(y_query | x_query, context)`` (the paper's
prior-data NLL, its Eq. 2).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core.model import Head, Objective
from genloom.plugins.pfn import BarHeadConfig, PfnObjectiveConfig
from genloom.toolkit.amortized import BarDistribution, ContextQueryPattern, GPPrior


class BarHead(Head):
    """``embed_points(x, y)``: Linear(x) + Linear(y) for context points, Linear(x) for queries; ``forward``: bar logits."""

    def __init__(self, x_dim: int, d_model: int, borders: torch.Tensor):
        super().__init__()
        self.x_encoder = nn.Linear(x_dim, d_model)
        self.y_encoder = nn.Linear(1, d_model)
        self.bars = BarDistribution(borders)
        self.output = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, self.bars.n_bars))

    def embed_points(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, x_dim) inputs and optional (B, N) labels -> (B, N, d_model)."""
        h = self.x_encoder(x.to(self.x_encoder.weight.dtype))
        if y is not None:
            h = h + self.y_encoder(y.to(h.dtype)[..., None])
        return h

    def embed(self, ids):
        raise TypeError("the bar-distribution head embeds real-valued points: use embed_points(x, y)")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(h)


class PfnObjective(Objective):
    pattern = ContextQueryPattern(n_context=0)

    def __init__(self, min_context: int, max_context: int, eval_context: int = 10):
        super().__init__()
        self.min_context, self.max_context, self.eval_context = min_context, max_context, eval_context

    def logits(self, model, x_context, y_context, x_query, pattern: ContextQueryPattern | None = None) -> torch.Tensor:
        """Bar logits (B, M, n_bars) at the M queries given the context, in one pass."""
        n = x_context.shape[1]
        head = model.head
        tokens = torch.cat([head.embed_points(x_context, y_context), head.embed_points(x_query)], dim=1)
        h = model.backbone(tokens, pattern=pattern or ContextQueryPattern(n_context=n))
        return head(h[:, n:])

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]
        hi = min(self.max_context, x.shape[1] - 1)
        c = int(torch.randint(self.min_context, hi + 1, ()).item())
        logits = self.logits(model, x[:, :c], y[:, :c], x[:, c:])
        bars = model.head.bars
        nll = -bars.log_prob(logits, y[:, c:]).mean()
        mse = ((bars.mean(logits) - y[:, c:]) ** 2).mean()
        return {"loss": nll, "nll": nll.detach(), "mse": mse.detach()}

    @torch.no_grad()
    def predict(self, model, x_context, y_context, x_query):
        """The predictive ``(mean (B, M), variance (B, M))`` of the labels at the queries."""
        logits = self.logits(model, x_context, y_context, x_query)
        return model.head.bars.mean(logits), model.head.bars.variance(logits)

    def evaluate_run(self, gen, options: dict) -> str:
        """``genloom evaluate RUN [tasks=N] [context=C]``: the run against the exact GP posterior on held-out test tasks."""
        from genloom.core.errors import ConfigError
        from genloom.core.model import build_component

        unknown = [k for k in options if k not in ("tasks", "context")]
        if unknown:
            raise ConfigError(f"unknown evaluate option(s) {', '.join(unknown)} (allowed: tasks, context)")
        spec = gen.model.config.components.get("data") if gen.model.config is not None else None
        data = build_component(spec, gen.ctx) if spec is not None else None
        if data is None or not isinstance(getattr(data, "prior", None), GPPrior):
            raise ConfigError("the PFN evaluation needs the run's data set to be gp-prior (its exact posterior is the reference)", path="data")
        context = int(options.get("context", self.eval_context))
        x, y, _ = data.tasks("test", int(options.get("tasks", 256)))
        if not 0 <= context < x.shape[1]:
            raise ConfigError(f"context must be in [0, {x.shape[1] - 1}], got {context}")
        figures = posterior_agreement(gen.model.eval(), data.prior, x, y, context)
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in figures.items())
        return (f"gp-prior test tasks: {x.shape[0]}, context {context}, queries {x.shape[1] - context}\n\n"
                f"| figure | value |\n| --- | --- |\n{rows}\n")


@torch.no_grad()
def posterior_agreement(model, prior: GPPrior, x, y, context: int) -> dict[str, float]:
    """How close the PFN's predictive is to the exact GP posterior on tasks (x (T, N, D), y (T, N)).

    ``mse_to_posterior_mean``: mean squared difference of the predictive means; ``posterior_mean_variance``:
    the variance of the exact posterior mean itself (what an uninformed constant would score);
    ``nll_pfn`` / ``nll_exact``: the labels' mean negative log predictive density under the PFN and the
    exact posterior (the exact one is the best any model can do in expectation).
    """
    objective = model.objective
    xc, yc, xq, yq = x[:, :context], y[:, :context], x[:, context:], y[:, context:]
    dtype = next(model.parameters()).dtype
    logits = objective.logits(model, xc.to(dtype), yc.to(dtype), xq.to(dtype)).double()
    bars = model.head.bars
    mean = bars.mean(logits)
    exact_mean, exact_var = prior.posterior(xc, yc, xq)
    nll_exact = 0.5 * (math.log(2 * math.pi) + exact_var.log() + (yq - exact_mean) ** 2 / exact_var)
    return {
        "mse_to_posterior_mean": float(((mean - exact_mean) ** 2).mean()),
        "posterior_mean_variance": float(((exact_mean - exact_mean.mean()) ** 2).mean()),
        "nll_pfn": float(-bars.log_prob(logits, yq).mean()),
        "nll_exact": float(nll_exact.mean()),
    }


def build_head(config: BarHeadConfig, ctx=None) -> BarHead:
    if config.x_dim is None or config.y_scale is None or config.d_model is None:
        config.bind(ctx)
    borders = BarDistribution.gaussian_borders(config.n_bars, config.y_scale, config.tail)
    return BarHead(config.x_dim, config.d_model, borders)


def build_objective(config: PfnObjectiveConfig, ctx=None) -> PfnObjective:
    if config.max_context is None:
        config.bind(ctx)
    return PfnObjective(config.min_context, config.max_context, config.eval_context)
