"""Prior-data fitted networks (Transformers Can Do Bayesian Inference, ICLR 2022).

What the paper does. Bayesian prediction is learned as supervised learning over a prior: draw a
task (a function) from the prior, draw a data set from it, hide some labels, and train a
Transformer to predict the hidden labels from the rest, ``-log q(y_query | x_query, D_context)``.
Minimising this loss in expectation over the prior minimises the KL from the posterior predictive
to q, so a trained PFN approximates Bayesian inference in one forward pass. The Transformer has no
positional encodings (the context is a set) and an attention mask under which context points
attend to each other and every query attends to the context and to itself only, so queries do not
influence each other. The output is the *Riemann* or bar distribution: a softmax over bars of
fixed borders, each with a uniform density inside; on a GP prior PFNs near-perfectly mimic the
exact GP posterior.

What this implementation does.

- data set ``gp-prior`` and tokenizer ``point-set`` (from :mod:`genloom.toolkit.amortized`,
  registered by the baseline plugin): tasks of ``n_points`` (x, y) pairs from an RBF GP.
- head ``bar-distribution``: a context point is embedded as ``Linear(x) + Linear(y)``, a query as
  ``Linear(x)``; a hidden state maps to the logits of a :class:`~genloom.toolkit.amortized.BarDistribution`
  whose borders are the quantiles of the prior's label marginal N(0, outputscale + noise^2), so
  each bar holds the same prior mass; the outer bars end at ``tail`` prior standard deviations.
- backbone: the baseline ``transformer`` with ``rope: false`` (position-free), from the registry.
- objective ``pfn``: draws one context size per batch uniformly in ``[min_context, max_context]``,
  runs context and queries in one pass under
  :class:`~genloom.toolkit.amortized.ContextQueryPattern` and minimises the bar NLL of the query
  labels. ``predict`` gives the predictive mean and variance; ``evaluate_run`` (``genloom
  evaluate RUN``) scores a run against the exact GP posterior on held-out test tasks.

What it simplifies. One fixed-hyper-parameter GP prior instead of the paper's priors with
hyper-priors, BNN priors and tabular priors; 1-D inputs by default; a bar distribution with a
bounded support (values beyond the outer borders are scored in the outer bars) instead of the
half-normal tails; a model of about 50k parameters trained for a few thousand steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.constraints import Interval, NonNegativeInt, PositiveFloat, PositiveInt

PAPER = records.Paper(title="Transformers Can Do Bayesian Inference", year=2022, arxiv="2112.10510")

_P = "genloom.plugins.pfn"


@dataclass
class BarHeadConfig:
    """Point embeddings in; the logits of a bar (Riemann) distribution over the label out."""

    n_bars: Annotated[int, Interval(ge=2)] = 100
    """Number of bars."""
    tail: PositiveFloat = 4.0
    """The outer borders sit at +-tail prior standard deviations of the label."""
    y_scale: PositiveFloat | None = None
    """Prior standard deviation of a label (None: the data set's, sqrt(outputscale + noise^2))."""
    x_dim: PositiveInt | None = None
    """Input dimension (None: the data set's)."""
    d_model: PositiveInt | None = None
    """Hidden width (None: the backbone's)."""

    def bind(self, ctx) -> None:
        if self.x_dim is None:
            self.x_dim = ctx.x_dim
        if self.y_scale is None:
            self.y_scale = ctx.y_scale
        if self.d_model is None:
            self.d_model = ctx.d_model


@dataclass
class PfnObjectiveConfig:
    """Bar NLL of held-out labels given a context drawn from the same task, one pass under the context/query mask."""

    min_context: NonNegativeInt = 0
    """Smallest context size drawn in training."""
    max_context: PositiveInt | None = None
    """Largest context size drawn in training (None: n_points - 1)."""
    eval_context: PositiveInt = 10
    """Context size of the test tasks scored by ``evaluate_run`` (the rest of each task are queries)."""

    def __post_init__(self):
        if self.max_context is not None and self.max_context < self.min_context:
            raise ValueError(f"max_context ({self.max_context}) must be >= min_context ({self.min_context})")

    def bind(self, ctx) -> None:
        n_points = ctx.n_points
        if self.max_context is None:
            self.max_context = n_points - 1
        from genloom.core.errors import ConfigError

        if self.max_context >= n_points:
            raise ConfigError(f"max_context ({self.max_context}) must leave at least one query among the {n_points} points of a task", path="objective.max_context")
        if self.eval_context >= n_points:
            raise ConfigError(f"eval_context ({self.eval_context}) must leave at least one query among the {n_points} points of a task", path="objective.eval_context")


@hookimpl
def genloom_heads():
    return [records.head("bar-distribution", f"{_P}.model:build_head", BarHeadConfig,
                         "Context (x, y) and query x embeddings; a bar (Riemann) distribution over the label.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("pfn", f"{_P}.model:build_objective", PfnObjectiveConfig,
                              "Prior-data fitting: bar NLL of query labels given a context, queries masked from each other.", PAPER)]
