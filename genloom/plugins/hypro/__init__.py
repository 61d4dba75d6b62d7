"""HYPRO: a hybridly normalized probabilistic model for long-horizon prediction of event sequences (NeurIPS 2022).

What the paper does. An autoregressive base model proposes whole continuations of an event
sequence; an energy function E(prefix, continuation) reweights them, so the model of a
continuation is ``p(x) proportional to p_AR(x) exp(-E(x))`` (globally normalised over
continuations, locally normalised inside the base model). Inference draws M continuations from
the base model and resamples one with weights ``softmax(-E)`` (self-normalised importance
resampling, exact as M grows); the energy is trained contrastively, to score the real
continuation below the base model's own proposals (a noise-contrastive loss over the M + 1
candidates).

What this implementation does.

- data set ``markov-events``: event-type sequences of a seeded random second-order Markov chain
  (``n_types`` types; Dirichlet(``concentration``) transition rows), as ``ids`` windows for the
  ``ids`` tokenizer.
- objective ``hypro``: the base objective (a node, default ``next-token``, built through the
  registry) plus ``nce_weight`` times the contrastive energy loss: for a window, the real
  continuation of ``horizon`` events after the first ``prefix`` events against
  ``num_proposals`` continuations sampled from the current base model (no gradient), loss
  ``-log softmax(-E)[real]``. The energy network (owned by the objective) embeds the events, takes
  the mean embedding of the prefix and the embeddings of the continuation through an MLP.
- decoder ``hypro``: each block draws ``num_proposals`` continuations of ``horizon`` events from
  the base model by ancestral sampling, scores them with the energy and commits the one drawn from
  ``softmax(-E)``; the next block conditions on everything so far.

What it simplifies. Event *types* only: the paper's events also carry continuous times, its base
model is a continuous-time neural Hawkes process and its energy a continuous-time Transformer;
here the base model is the baseline causal transformer over discrete types. Logits processors are
not applied to the proposals; prompts must have equal lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, PositiveFloat, PositiveInt, Seed

PAPER = records.Paper(
    title="HYPRO: A Hybridly Normalized Probabilistic Model for Long-Horizon Prediction of Event Sequences",
    year=2022,
    arxiv="2210.01753",
)

_P = "genloom.plugins.hypro"


@dataclass
class MarkovEventsConfig:
    """Event-type sequences from a seeded random second-order Markov chain."""

    n_types: PositiveInt = 4
    """Number of event types (the vocabulary of the ``ids`` tokenizer)."""
    seq_len: PositiveInt = 24
    """Events per training window (the sample holds seq_len + 1 ids)."""
    concentration: PositiveFloat = 0.3
    """Dirichlet concentration of the transition rows (small: nearly deterministic chains)."""
    chain_seed: Seed = 0
    """Seed of the transition table."""
    seed: Seed = 0
    """Seed of the window draws (disjoint streams per split)."""
    train_windows: PositiveInt = 200_000
    """Windows in the training split (drawn lazily)."""
    eval_windows: PositiveInt = 512
    """Windows in each of val and test."""
    batch_size: PositiveInt = 64
    """Windows per training batch."""
    eval_batch_size: PositiveInt | None = None
    """Windows per evaluation batch (None: batch_size)."""

    def bind(self, ctx) -> None:
        ctx.set("seq_len", self.seq_len)
        if "vocab_size" in ctx and ctx.vocab_size < self.n_types:
            from genloom.core.errors import ConfigError

            raise ConfigError(f"the tokenizer's vocab_size ({ctx.vocab_size}) must cover the {self.n_types} event types", path="tokenizer.vocab_size")


@dataclass
class HyproConfig:
    """Base objective plus the contrastive energy loss against the base model's own proposals."""

    base: dict | str = records.node_field("objective", {"name": "next-token"})
    """The base model's objective, as a component node."""
    prefix: PositiveInt = 8
    """Events of a window the energy conditions on."""
    horizon: PositiveInt = 4
    """Events of the continuation the energy scores; published as ``ctx.hypro_horizon``."""
    num_proposals: PositiveInt = 8
    """Base-model proposals per window in the contrastive loss."""
    energy_width: PositiveInt = 32
    """Width of the energy network."""
    nce_weight: NonNegativeFloat = 1.0
    """Weight of the contrastive energy loss."""

    def bind(self, ctx) -> None:
        ctx.set("hypro_horizon", self.horizon)
        if "seq_len" in ctx and self.prefix + self.horizon > ctx.seq_len + 1:
            from genloom.core.errors import ConfigError

            raise ConfigError(f"prefix + horizon ({self.prefix + self.horizon}) must fit in a window of {ctx.seq_len + 1} events", path="objective.horizon")


@dataclass
class HyproDecoderConfig:
    """Draw M continuations from the base model, resample one with softmax(-E) weights."""

    num_proposals: PositiveInt = 16
    """Proposals M per block."""
    horizon: PositiveInt | None = None
    """Events per block (None: the objective's horizon)."""

    def bind(self, ctx) -> None:
        if self.horizon is None:
            self.horizon = ctx.get("hypro_horizon", 4)


@hookimpl
def genloom_datasets():
    return [records.dataset("markov-events", f"{_P}.model:build_data", MarkovEventsConfig,
                            "Event-type sequences of a seeded random second-order Markov chain.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("hypro", f"{_P}.model:build_objective", HyproConfig,
                              "Base AR objective + energy trained contrastively against the base model's proposals.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("hypro", f"{_P}.model:build_decoder", HyproDecoderConfig,
                            "Hybrid decoding: M base-model continuations resampled with softmax(-E).", PAPER)]
