"""MaM: generative marginalization models (Liu, Ramadge & Adams, 2024).

What the paper does. A marginalization model learns, besides the conditionals of an any-order
autoregressive model p_phi(x_i | x_S), a network for the *marginals* themselves: log p_theta(x_S)
for any subset S of observed variables in one forward pass (an ARM needs |S| passes, one per
factor). The two are tied by *marginalization self-consistency*,
``p_theta(x_S) p_phi(x_i | x_S) = p_theta(x_S, x_i)`` for every S, i not in S and value x_i, with
``p_theta(empty) = 1``; for maximum likelihood the marginals are fitted under this constraint as a
squared penalty on log values over sampled (x, S, i).

What this implementation does.

- head ``mam`` (``head.py``): over the masked state, a scalar marginal ``log p_theta(x_S)``
  (mean-pooled hidden states, small MLP) and per-position conditional logits ``p_phi``, from one
  backbone pass; ``marginal_log_prob(model, ids, observed)`` is any batch of marginals in one pass.
- objective ``mam`` (``objective.py``): the any-order ARM loss for the conditionals, the squared
  self-consistency residual along one random (S, i) per sequence (the conditional held fixed) and
  the boundary term, optionally ``-log p_theta(x)`` on the data.
- data set ``ising-bits`` (``data.py``): d-bit vectors from an Ising chain with their exact law
  (all ``2^d`` states), so marginals and normalisation can be checked exhaustively.

What it simplifies at toy scale. One backbone serves both outputs (the paper uses separate
networks for theta and phi); the residual is taken on the observed value of x_i only (the paper's
sampled x); the energy-based training setting of the paper is not implemented; there is no
sampler (generation would use the conditionals, as any any-order ARM decoder does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.constraints import AnyFloat, Interval, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

_P = "genloom.plugins.mam"

PAPER = records.Paper(
    title="Generative Marginalization Models",
    year=2024,
    arxiv="2310.12920",
)


def _reserve_mask(ctx) -> None:
    ctx.add_special_token("mask")


@dataclass
class MamHeadConfig:
    """Marginal and conditional outputs over a masked state."""

    init_std: PositiveFloat = 0.02
    """Initial weight scale of the embedding and the conditional projection."""

    def bind(self, ctx):
        _reserve_mask(ctx)


@dataclass
class MamObjectiveConfig:
    """Any-order conditionals plus self-consistent marginals (maximum likelihood)."""

    consistency_weight: PositiveFloat = 1.0
    """Weight of the squared self-consistency residual and the boundary term."""
    likelihood_weight: NonNegativeFloat = 0.0
    """Weight of -log p_theta(x) on the data (0: the marginals are distilled from the conditionals only)."""

    def bind(self, ctx):
        _reserve_mask(ctx)


@dataclass
class IsingBitsConfig:
    """d-bit vectors from a one-dimensional Ising chain (exact law by enumeration)."""

    bits: Annotated[int, Interval(ge=1, le=16)] = 8
    """Length d of each vector (2^d states are enumerated)."""
    coupling: AnyFloat = 0.8
    """Nearest-neighbour coupling J (positive: neighbours agree)."""
    field: AnyFloat = 0.3
    """External field h (positive: ones are likelier)."""
    train_size: PositiveInt = 20000
    """Training vectors (drawn from the exact law)."""
    eval_size: PositiveInt = 2000
    """Vectors in each of the validation and test splits."""
    batch_size: PositiveInt = 256
    """Vectors per training batch."""
    seed: NonNegativeInt = 0
    """Seed of the sample streams (one per split)."""


@hookimpl
def genloom_heads():
    return [records.head("mam", f"{_P}.head:build", MamHeadConfig, "MaM head: a marginal log p(x_S) and any-order conditionals from one pass over a masked state.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("mam", f"{_P}.objective:build", MamObjectiveConfig, "Marginalization self-consistency: any-order conditionals and distilled marginals.", PAPER)]


@hookimpl
def genloom_datasets():
    return [records.dataset("ising-bits", f"{_P}.data:build", IsingBitsConfig, "d-bit vectors from an Ising chain, with the exact law of all 2^d states.")]
