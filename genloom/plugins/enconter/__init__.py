"""ENCONTER: entity-constrained progressive generation with an insertion transformer (Hsieh et al., 2021).

What the paper does. Generation starts from the entities that must appear (constraints) and
grows the sequence by insertion, in parallel in every slot (the Insertion Transformer's decoding):
each pass, each slot either receives a token or declares itself done. Training follows an oracle
order; with the balanced-binary-tree order every slot receives the middle token of what it still
misses, so a sequence is complete after a logarithmic number of passes. Entity-span-aware
inference forbids insertions inside an entity span, so each entity stays contiguous.

What this implementation does.

- head ``enconter`` (``head.py``): per slot a softmax over the vocabulary plus *no insertion*,
  from one full-attention pass over ``[prefix | canvas]``; locked slots and slots past the canvas
  can only choose *no insertion*.
- objective ``enconter`` (``objective.py``): random entity spans per target (the constraints),
  a uniform state of the balanced-binary-tree oracle (``oracle.py``) started from them, per-slot
  cross-entropy against the middle token of each missing range or *no insertion*.
- decoder ``enconter`` (``decoder.py``): starts from the constraint spans of the target prefix
  (separated by the end-of-sequence id), locks the slots inside each span, inserts in parallel
  (``genloom.toolkit.anyorder.InsertionCanvas``) until no slot inserts.

What it simplifies at toy scale. Entities are random contiguous runs of the target rather than
named entities found by a tagger; the oracle uses the hard middle token (the paper's
balanced-tree order) rather than a soft weighting of the range; the oracle count we prove is
``ceil(log2(n + 1))`` insertion passes plus one final pass in which no slot inserts (the
technique list writes ``ceil(log2 n) + 1``: the same count, except at powers of two, where the
final pass makes it one more).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeInt, PositiveFloat, PositiveInt

_P = "genloom.plugins.enconter"

PAPER = records.Paper(
    title="ENCONTER: Entity Constrained Progressive Sequence Generation via Insertion-based Transformer",
    year=2021,
    arxiv="2103.09548",
)


@dataclass
class EnconterHeadConfig:
    """Per-slot token or no-insertion logits."""

    tie_weights: bool = True
    """Share the embedding and output projection matrices."""
    init_std: PositiveFloat = 0.02
    """Initial weight scale."""


@dataclass
class EnconterObjectiveConfig:
    """Balanced-binary-tree oracle insertions from random entity constraints."""

    max_entities: NonNegativeInt = 2
    """Entity spans drawn per target (uniform from 0 to this many)."""
    max_entity_length: PositiveInt = 3
    """Longest entity span, in tokens."""


@dataclass
class EnconterDecoderConfig:
    """Parallel insertions into every open slot, entity spans locked."""

    greedy: bool = True
    """Take the most likely choice in every slot instead of sampling it."""
    temperature: PositiveFloat = 1.0
    """Sampling temperature (unused with ``greedy``)."""


@hookimpl
def genloom_heads():
    return [records.head("enconter", f"{_P}.head:build", EnconterHeadConfig, "ENCONTER head: per-slot token or no-insertion distribution.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("enconter", f"{_P}.objective:build", EnconterObjectiveConfig, "Insertion training along the balanced-binary-tree oracle from entity constraints.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("enconter", f"{_P}.decoder:build", EnconterDecoderConfig, "Parallel insertion decoding from entity constraints, spans kept contiguous.", PAPER)]
