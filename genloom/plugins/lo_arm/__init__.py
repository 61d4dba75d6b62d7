"""LO-ARM: autoregressive models that learn their generation order (Wang et al., 2025).

What the paper does. For data without a natural order (graphs, images), the model generates one
element at a time in an order it chooses itself: at each state an *order policy* p(z_t | x_{z<t})
picks the next position and a classifier p(x_{z_t} | x_{z<t}) its value, on top of an any-order
(masked-input) autoregressive network. The likelihood sums over every order, so training
maximises a variational lower bound with a variational order policy q(z | x) that sees the data,
estimated with trajectories sampled from q and a score-function gradient for q.

What this implementation does.

- head ``lo-arm`` (``head.py``): token logits and one order logit per position from one pass of
  any full-attention backbone over the masked state; the order policy is a softmax over the
  positions still masked (exactly zero probability on generated ones).
- objective ``lo-arm`` (``objective.py``): the ELBO
  ``E_q[sum_t log p(z_t|s_t) + log p(x_{z_t}|s_t) - log q(z_t|s_t,x)]`` with the posterior q as its
  own backbone (the ``posterior`` node) over the true tokens plus a revealed flag; ``samples``
  trajectories per sequence, leave-one-out REINFORCE for q, exact gradients for p. On
  source-conditioned data the source block is revealed from the start. ``exact_log_likelihood``
  and ``exact_elbo`` enumerate all orders for tests.
- decoder ``lo-arm`` (``decoder.py``): one generator pass per position, the policy picks where.

What it simplifies at toy scale. Sequences of tokens rather than molecular graphs (a position is a
node or an edge slot in the paper); one trajectory batch per step rather than the paper's
estimator variants; no pretraining of the classifier as a plain any-order ARM first.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt

_P = "genloom.plugins.lo_arm"

PAPER = records.Paper(
    title="Learning-Order Autoregressive Models with Application to Molecular Graph Generation",
    year=2025,
    arxiv="2503.05979",
)


def _reserve_mask(ctx) -> None:
    ctx.add_special_token("mask")


@dataclass
class LoArmHeadConfig:
    """Token and order-policy logits over a masked state."""

    tie_weights: bool = True
    """Share the embedding and output projection matrices."""
    init_std: PositiveFloat = 0.02
    """Initial weight scale."""

    def bind(self, ctx):
        _reserve_mask(ctx)


@dataclass
class LoArmObjectiveConfig:
    """The variational bound with a learnt order posterior."""

    samples: PositiveInt = 2
    """Trajectories drawn from the posterior per sequence (>= 2 gives the leave-one-out baseline)."""
    posterior: dict | str = records.node_field("backbone", {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2, "rope": True})
    """The backbone of the variational order policy q(z | state, x); it must serve full attention."""

    def bind(self, ctx):
        _reserve_mask(ctx)


@dataclass
class LoArmDecoderConfig:
    """The order policy picks each next position; one generator pass per position."""

    greedy: bool = False
    """Take the most likely position and token instead of sampling them."""
    temperature: PositiveFloat = 1.0
    """Sampling temperature of both choices (unused with ``greedy``)."""

    def bind(self, ctx):
        _reserve_mask(ctx)


@hookimpl
def genloom_heads():
    return [records.head("lo-arm", f"{_P}.head:build", LoArmHeadConfig, "LO-ARM head: token logits and a learnt order policy over the masked positions.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("lo-arm", f"{_P}.objective:build", LoArmObjectiveConfig, "Variational bound over generation orders with a learnt order posterior (REINFORCE).", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("lo-arm", f"{_P}.decoder:build", LoArmDecoderConfig, "Learnt-order decoding: the order policy picks each next position.", PAPER)]
