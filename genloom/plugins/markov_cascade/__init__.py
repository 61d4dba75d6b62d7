"""Cascaded text generation with Markov transformers.

What the paper does. A Markov transformer of order m predicts each token from the previous m
tokens only (trained with the context cut every m + 1 tokens, so one network serves every order
0..m). Its sequence score is an m-th order CRF, which can be decoded exactly by Viterbi over
m-gram states -- in parallel over positions with (max, +) scans, so the depth is logarithmic
in the length. Exact Viterbi over V^m states is too costly, so decoding is a cascade: stage k
scores the surviving k-grams with the order-k model, computes every state's max-marginal (the best
score of a complete sequence through it) and keeps the best few per position; the survivors' edges
are the next stage's (k+1)-grams; the last stage runs Viterbi on a small lattice.

What this implementation does.

- backbone ``markov-transformer`` (``backbone.py``): the registry's causal ``transformer`` run on
  every position's window of the last ``order`` inputs (relative positions), so the output at t
  has an exactly zero Jacobian with respect to every input before t - order + 1; a shorter window
  gives the lower orders; its state (``MarkovState``) keeps the consumed inputs (rollback, reorder,
  snapshot, extend), so ordinary decoders and the continuous batcher run on it too.
- decoder ``markov-cascade`` (``cascade.py``, ``decoder.py``): stages 1..m over k-gram lattices,
  max-marginals from prefix and suffix (max, +) scans of depth ceil(log2 L) (Hillis-Steele;
  ``parallel: true``) or from the sequential max-product passes (the default: the scan's n^3
  products are too wide for a byte vocabulary's first stage), pruning to ``max_states`` states per position by max-marginal, Viterbi on the last stage;
  ``max_states: null`` disables pruning, and the result is exact Viterbi of the order-m CRF
  (for the Markov transformer: the most likely continuation of the requested length).

What it simplifies. Unconditional (prompt-continuation) text instead of translation, so the
cascade starts at order 1 (the paper's order 0 is the non-autoregressive source-conditioned
model); pruning keeps a fixed number of states per position (top-K) rather than the paper's
threshold mixing the maximum and the mean max-marginal; sequences have the requested length (no
length prediction or end-of-sequence handling inside the lattice); the network is trained with the
ordinary next-token objective on its windows (which gives every order up to m, since early
positions see shorter windows) rather than with the paper's explicit resets. Which path pruning
protects: a stage's own Viterbi path has the highest max-marginal at every position, so that stage
never prunes it (tested at every stage); the final order's Viterbi path is guaranteed only without
pruning (the paper's cascade is approximate too), and the tests measure how often it survives.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveInt

_P = "genloom.plugins.markov_cascade"

PAPER = records.Paper(
    title="Cascaded Text Generation with Markov Transformers",
    year=2020,
    arxiv="2006.01112",
)


@dataclass
class MarkovTransformerConfig:
    """A causal transformer whose output at t reads only the last ``order`` inputs."""

    order: PositiveInt = 2
    """Markov order m: each position reads itself and the m - 1 inputs before it, so each next token is predicted from the last m tokens."""
    d_model: PositiveInt = 64
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 2
    """Transformer blocks run on every window."""
    n_heads: PositiveInt = 4
    """Attention heads (must divide d_model)."""

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@dataclass
class MarkovCascadeConfig:
    """Cascaded decoding: stages of order 1..m with max-marginal pruning, Viterbi at the last."""

    max_states: PositiveInt | None = 8
    """States (k-grams) kept per position after each stage but the last (null: no pruning, exact Viterbi of the order-m CRF)."""
    order: PositiveInt | None = None
    """The CRF's order m (null: the backbone's Markov order, e.g. markov-transformer's ``order``)."""
    parallel: bool = False
    """Max-marginals by (max, +) scans of depth ceil(log2 L) (O(L log L n^3) work for n states per
    position: small vocabularies); false: sequential max-product passes (depth L, O(L n^2) work)."""


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "markov-transformer",
            f"{_P}.backbone:build",
            MarkovTransformerConfig,
            "Markov transformer: a causal transformer on each position's window of the last `order` inputs (exactly Markov).",
            PAPER,
        )
    ]


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "markov-cascade",
            f"{_P}.decoder:build",
            MarkovCascadeConfig,
            "Cascaded decoding of an order-m CRF: max-marginal pruning by (max, +) scans, Viterbi at the last stage.",
            PAPER,
        )
    ]
