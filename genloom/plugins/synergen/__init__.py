"""SynerGen: a contextualized generative recommender for unified search and recommendation (2025).

What the paper does. One decoder-only transformer reads a user's behavioural sequence (items the
user interacted with, each with its timestamp, plus search queries) and serves both retrieval and
ranking. It is trained jointly: an InfoNCE loss retrieves the next item against in-batch negatives,
and a hybrid pointwise (binary cross-entropy) plus pairwise (BPR-style) loss ranks the true item
above sampled candidates. Time enters attention through a time-aware rotary embedding: queries and
keys are rotated by angles that depend on both the event's position and its timestamp, so an
attention logit depends only on the position and time differences between two events.

What this implementation does.

- data set ``synthetic-behaviour``: seeded synthetic behavioural sequences of ``n_items`` item ids
  with timestamps. Items belong to ``n_clusters`` clusters; after a short gap the next item stays
  in the current cluster (or drifts to the next cluster with probability ``drift``), after a long
  gap (a new session) it returns to the window's home cluster (that of its first item), so the time
  gaps carry information. Each window starts at a random absolute time offset.
- backbone ``synergen``: a pre-norm causal transformer whose attention uses the time-aware rotary
  embedding: of the ``Dh/2`` rotation planes of a head, the first ``Dh/2 - time_planes`` turn with
  the position, the last ``time_planes`` with ``timestamp / time_scale`` (own frequency ladder,
  1 down to 1 / ``time_theta``). Its forward takes the
  timestamps as ``times=`` (absent: all zero, i.e. plain positional rotary) and, optionally, the
  times the queries turn with as ``query_times=``.
- objective ``synergen``: ``retrieval_weight * InfoNCE + pointwise_weight * BCE +
  pairwise_weight * BPR`` on one decoder. Queries are the hidden states at every position, item
  vectors are the head's input embeddings; InfoNCE is cross-entropy over the (N, N) matrix of
  cosine similarities / ``temperature`` between the N queries of a batch and their N next items;
  ranking scores are dot products against the next item and ``num_negatives`` uniformly sampled
  items.

What it simplifies. No search queries and no text features (the paper's unified search side):
sequences hold item ids and timestamps only; the data are synthetic; in-batch negatives include
accidental duplicates of the positive (no masking); negatives for ranking are uniform, not drawn
from a retrieval stage. The backbone keeps no incremental state (decoding recomputes the prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.constraints import Interval, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Seed

PAPER = records.Paper(
    title="SynerGen: Contextualized Generative Recommender for Unified Search and Recommendation",
    year=2025,
    arxiv="2509.21777",
)

_P = "genloom.plugins.synergen"


@dataclass
class SyntheticBehaviourConfig:
    """Seeded behavioural sequences: item ids with timestamps, cluster jumps after long gaps."""

    n_items: PositiveInt = 64
    """Number of item ids (the vocabulary of the ``ids`` tokenizer)."""
    n_clusters: PositiveInt = 8
    """Item clusters (n_items must be a multiple)."""
    seq_len: PositiveInt = 24
    """Events per training window (the sample holds seq_len + 1 events)."""
    session_gap: PositiveFloat = 5.0
    """Gaps longer than this start a new session (the next item returns to the home cluster)."""
    drift: Annotated[float, Interval(ge=0, le=1)] = 0.3
    """Probability that an in-session event moves to the next cluster."""
    mean_gap: PositiveFloat = 3.0
    """Mean of the exponential gaps between events."""
    max_offset: NonNegativeFloat = 1000.0
    """Windows start at a uniform absolute time in [0, max_offset)."""
    seed: Seed = 0
    """Seed of the window draws (disjoint streams per split)."""
    train_windows: PositiveInt = 100_000
    """Windows in the training split (drawn lazily)."""
    eval_windows: PositiveInt = 512
    """Windows in each of val and test."""
    batch_size: PositiveInt = 32
    """Windows per training batch."""
    eval_batch_size: PositiveInt | None = None
    """Windows per evaluation batch (None: batch_size)."""

    def __post_init__(self):
        if self.n_items % self.n_clusters:
            raise ValueError(f"n_items ({self.n_items}) must be a multiple of n_clusters ({self.n_clusters})")

    def bind(self, ctx) -> None:
        ctx.set("seq_len", self.seq_len)
        if "vocab_size" in ctx and ctx.vocab_size < self.n_items:
            from genloom.core.errors import ConfigError

            raise ConfigError(f"the tokenizer's vocab_size ({ctx.vocab_size}) must cover the {self.n_items} items", path="tokenizer.vocab_size")


@dataclass
class SynergenBackboneConfig:
    """Causal transformer with a time-aware rotary embedding (position and timestamp planes)."""

    d_model: PositiveInt = 32
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 2
    """Transformer blocks."""
    n_heads: PositiveInt = 2
    """Attention heads (d_model / n_heads must be even)."""
    time_planes: NonNegativeInt = 4
    """Rotation planes per head turned by the timestamp (the rest turn with the position)."""
    rope_theta: PositiveFloat = 10000.0
    """Base of the rotary frequencies."""
    time_scale: PositiveFloat = 1.0
    """Timestamps are divided by this before they set a rotation angle."""
    time_theta: PositiveFloat = 100.0
    """The time planes' frequencies run from 1 down to 1 / time_theta (geometrically)."""
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    """Dropout on the attention output and MLP."""

    def __post_init__(self):
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model ({self.d_model}) / n_heads ({self.n_heads}) must be an even integer")
        if self.time_planes > self.d_model // self.n_heads // 2:
            raise ValueError(f"time_planes ({self.time_planes}) must be at most head_dim / 2 ({self.d_model // self.n_heads // 2})")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)


@dataclass
class SynergenObjectiveConfig:
    """Joint InfoNCE retrieval + pointwise BCE + pairwise BPR ranking on one decoder."""

    temperature: PositiveFloat = 0.1
    """Temperature of the InfoNCE cosine similarities."""
    num_negatives: PositiveInt = 8
    """Uniformly sampled negative items per position for the ranking losses."""
    retrieval_weight: NonNegativeFloat = 1.0
    """Weight of the InfoNCE retrieval loss."""
    pointwise_weight: NonNegativeFloat = 0.5
    """Weight of the pointwise binary cross-entropy ranking loss."""
    pairwise_weight: NonNegativeFloat = 0.5
    """Weight of the pairwise BPR ranking loss."""
    query_at_next_time: bool = True
    """Queries turn with the timestamp of the event they predict (the request time), keys with their own."""


@hookimpl
def genloom_datasets():
    return [records.dataset("synthetic-behaviour", f"{_P}.data:build", SyntheticBehaviourConfig,
                            "Synthetic behavioural sequences: item ids with timestamps, cluster jumps after long gaps.", PAPER)]


@hookimpl
def genloom_backbones():
    return [records.backbone("synergen", f"{_P}.backbone:build", SynergenBackboneConfig,
                             "Causal transformer with a time-aware rotary embedding (position + timestamp).", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("synergen", f"{_P}.objective:build", SynergenObjectiveConfig,
                              "Joint InfoNCE next-item retrieval + pointwise BCE + pairwise BPR ranking.", PAPER)]
