"""Martingale Posterior Neural Processes (ICLR 2023).

What the paper does. A neural process predicts a stochastic process from a context set. Instead
of a finite-dimensional latent variable as the source of function uncertainty, MPNP uses the
martingale posterior: specify a predictive distribution for future data, generate pseudo data
from it, and condition on the context plus the pseudo data; the spread of the resulting
predictions over pseudo-data draws is the function uncertainty (under conditions on the
predictive it corresponds to a Bayesian posterior). The predictive is implicit: a neural
generator turns the context representation, a pseudo input and noise into a pseudo label. The
model is trained on the marginal likelihood of the targets averaged over pseudo-data draws,
``-log (1/K) sum_k p(Y_T | X_T, C u Z_k)``, together with the plain conditional likelihood
``-log p(Y_T | X_T, C)``.

What this implementation does.

- data set ``gp-prior`` and tokenizer ``point-set`` (from :mod:`genloom.toolkit.amortized`).
- head ``np-gaussian``: a context point embeds as MLP(x, y), a target as MLP(x); a hidden state
  maps to a Gaussian (mean, softplus scale + ``min_scale``).
- backbone ``np-encoder``: the conditional NP body under ``ContextQueryPattern(n)``: context
  tokens -> phi -> masked mean pool r (permutation-invariant); each target token -> rho([h_t, r,
  a_t]) with a_t its cross-attention to the context points (the attentive NP's deterministic path,
  ``attention: true``; also permutation-invariant). No latent variable anywhere.
- objective ``mpnp``: one context size per batch; ``n_pseudo`` pseudo inputs x~ uniform on the
  data range and, for each of ``num_pseudo_sets`` draws, pseudo labels y~ = g(r_C, x~, eps) from
  the implicit generator (an MLP, eps ~ N(0, I)); the targets (all points) are scored under each
  re-conditioned prediction; loss = the marginal NLL over the draws + the plain conditional NLL,
  both per target. ``function_samples`` gives the means of the re-conditioned predictions (one
  function per pseudo-data draw); ``evaluate_run`` scores them against the exact GP posterior.

What it simplifies. A small deterministic-path body (mean pooling plus one cross-attention)
instead of the paper's transformer NPs; the generator is an MLP on the context representation (the paper's is
a set-conditioned network); pseudo inputs uniform on the data range; pseudo data drawn in one
shot, not sequentially.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeInt, PositiveFloat, PositiveInt

PAPER = records.Paper(title="Martingale Posterior Neural Processes", year=2023, arxiv="2304.09431")

_P = "genloom.plugins.mpnp"


@dataclass
class NpGaussianHeadConfig:
    """Point embeddings in; a Gaussian over a target's label out."""

    hidden: PositiveInt = 64
    """Width of the embedding MLPs."""
    min_scale: PositiveFloat = 0.01
    """Smallest predictive standard deviation."""
    x_dim: PositiveInt | None = None
    """Input dimension (None: the data set's)."""
    d_model: PositiveInt | None = None
    """Hidden width (None: the backbone's)."""

    def bind(self, ctx) -> None:
        if self.x_dim is None:
            self.x_dim = ctx.x_dim
        if self.d_model is None:
            self.d_model = ctx.d_model


@dataclass
class NpEncoderConfig:
    """The conditional NP body: phi on context tokens, masked mean pool, rho on [target, pooled context]."""

    d_model: PositiveInt = 64
    """Model width; published as ``ctx.d_model``."""
    layers: PositiveInt = 3
    """Linear layers of phi and of rho."""
    attention: bool = True
    """Also let each target attend to the context points (the attentive NP's deterministic path); False: mean pooling only."""
    n_heads: PositiveInt = 4
    """Heads of that cross-attention."""

    def __post_init__(self):
        if self.attention and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)


@dataclass
class MpnpConfig:
    """Martingale posterior training: targets scored after re-conditioning on generated pseudo data."""

    n_pseudo: NonNegativeInt = 10
    """Pseudo points generated per draw (0: a plain conditional NP)."""
    num_pseudo_sets: PositiveInt = 8
    """Pseudo-data draws K per task in training (and function samples in evaluation)."""
    noise_dim: PositiveInt = 8
    """Dimension of the generator's noise."""
    min_context: PositiveInt = 3
    """Smallest context size drawn in training."""
    max_context: PositiveInt = 20
    """Largest context size drawn in training."""
    eval_context: PositiveInt = 10
    """Context size of the test tasks scored by ``evaluate_run``."""

    def __post_init__(self):
        if self.max_context < self.min_context:
            raise ValueError(f"max_context ({self.max_context}) must be >= min_context ({self.min_context})")

    def bind(self, ctx) -> None:
        from genloom.core.errors import ConfigError

        for name in ("max_context", "eval_context"):
            if getattr(self, name) >= ctx.n_points:
                raise ConfigError(f"{name} ({getattr(self, name)}) must leave targets among the {ctx.n_points} points of a task", path=f"objective.{name}")


@hookimpl
def genloom_heads():
    return [records.head("np-gaussian", f"{_P}.model:build_head", NpGaussianHeadConfig,
                         "Neural-process point embeddings; a Gaussian predictive per target.", PAPER)]


@hookimpl
def genloom_backbones():
    return [records.backbone("np-encoder", f"{_P}.model:build_backbone", NpEncoderConfig,
                             "Conditional NP body: permutation-invariant context pooling, targets decoded with it; no latent.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("mpnp", f"{_P}.model:build_objective", MpnpConfig,
                              "Martingale posterior NP: uncertainty from generated pseudo data, marginal NLL over draws.", PAPER)]
