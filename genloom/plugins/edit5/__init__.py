"""EdiT5: semi-autoregressive text editing (Mallinson et al., 2022).

What the paper does. Most of an edited text is copied from its source, so EdiT5 generates it in
three sub-tasks instead of token by token: (1) *tagging*, non-autoregressive, decides for every
source token whether it is kept; (2) *re-ordering*, non-autoregressive, a pointer network over
the encoder states that points from each kept token to the one that follows it in the output,
decoded into an order; (3) *insertion*, an autoregressive decoder that generates only the tokens
that are not in the source, each group introduced by the position it goes to. Realization merges
the kept tokens, in pointer order, with the insertions. The encoder and the decoder are a T5
warm-start; the decoder runs as many steps as there are inserted tokens (plus their position
markers), far fewer than the output length on editing tasks.

What this implementation does.

- ``labels.py``: the gold edit of a (source, target) pair (keep/delete tags, pointer order,
  insertions by slot) derived exactly by greedy string tiling, its realization (the inverse), and
  the insertion sequence ``[slot marker, tokens...]* end``.
- head ``edit5`` (``head.py``, ``pointer.py``): the token embedding, the tagger, the pointer
  network (query/key scores between encoder states, a learnt start query; greedy decoding into a
  permutation of the kept tokens), and the insertion logits, whose slot markers are scored by
  pointing at source tokens. One backbone reads ``[source block | start, insertions]`` under
  ``prefix(S)``: the bidirectional source block is the encoder, the causal rest the decoder.
- objective ``edit5`` (``objective.py``): tagging + pointer + insertion cross-entropies in one
  backbone pass, on any source-conditioned data (``SourceTargetPairs``).
- decoder ``edit5`` (``decoder.py``): one NAR pass over the source block (tags, pointer order,
  the decoding state), then the constrained insertion loop, one pass per insertion-sequence token;
  ``genloom generate RUN source=...`` prints the realized target.
- data set ``edit-fusion`` (``data.py``): synthetic sentence fusion with deletions, an insertion
  and re-ordering, split by source text.

What it simplifies at toy scale. No T5 warm-start: a small genloom transformer trained from
scratch, shared between encoder and decoder in the prefix-LM form (the decoder attends to the
encoder states through self-attention, not to a re-ordered copy of them through cross-attention).
Tagging and pointing are argmax/greedy (no beam); the pointer is trained with teacher forcing on
gold tags. Insertion slots are named by the source position they follow (a pointed marker)
rather than by a separate insertion-position tagger. Byte tokens, not sentencepieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.constraints import Interval, NonNegativeFloat, PositiveFloat, PositiveInt, Seed

_P = "genloom.plugins.edit5"

PAPER = records.Paper(title="EdiT5: Semi-Autoregressive Text-Editing with T5 Warm-Start", year=2022, arxiv="2205.12209")


def reserve_tokens(ctx) -> tuple[int, int]:
    """Reserve the insertion sequence's special tokens: the slot markers ``edit5_slot_0 ..
    edit5_slot_S`` (contiguous ids) and the decoder's start token. Returns (slot 0 id, start id)."""
    from genloom.core.errors import ConfigError

    S = ctx.get("source_length")
    if not S:
        raise ConfigError("edit5 needs source-conditioned data (a data set that publishes source_length, e.g. 'edit-fusion')", path=ctx.current)
    ids = [ctx.add_special_token(f"edit5_slot_{k}") for k in range(int(S) + 1)]
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ConfigError("the edit5 slot markers need contiguous ids (another component reserved tokens between them)", path=ctx.current)
    return ids[0], ctx.add_special_token("edit5_start")


@dataclass
class Edit5HeadConfig:
    """The EdiT5 head: embedding, tagger, pointer network and insertion logits."""

    d_pointer: PositiveInt = 64
    """Width of the pointer network's queries and keys (also of the slot-marker pointing)."""
    init_std: PositiveFloat = 0.02
    """Standard deviation of the embedding initialisation."""

    def bind(self, ctx):
        reserve_tokens(ctx)


@dataclass
class Edit5ObjectiveConfig:
    """Tagging + pointer + insertion losses on gold edits derived from the (source, target) pairs."""

    min_span: PositiveInt = 2
    """Shortest run of tokens the gold alignment copies from the source (greedy string tiling);
    shorter coincidental matches become insertions."""
    tag_weight: NonNegativeFloat = 1.0
    """Weight of the keep/delete cross-entropy."""
    pointer_weight: NonNegativeFloat = 1.0
    """Weight of the pointer (next kept token) cross-entropy."""
    insertion_weight: NonNegativeFloat = 1.0
    """Weight of the insertion decoder's cross-entropy."""

    def __post_init__(self):
        if self.tag_weight + self.pointer_weight + self.insertion_weight <= 0:
            raise ValueError("tag_weight, pointer_weight and insertion_weight must not all be 0")

    def bind(self, ctx):
        reserve_tokens(ctx)


@dataclass
class Edit5DecoderConfig:
    """One non-autoregressive pass (tags, pointer order), then the autoregressive insertion loop."""

    greedy: bool = True
    """Insertion tokens by argmax; false samples them from the (constrained) insertion distribution."""

    def bind(self, ctx):
        reserve_tokens(ctx)


@dataclass
class EditFusionConfig:
    """Synthetic sentence fusion ("tom runs. he eats." -> "tom runs and eats."), split by source."""

    source_length: PositiveInt = 24
    """Tokens of the source block (shorter sources are left-padded); published as ``ctx.source_length``."""
    target_length: Annotated[int, Interval(ge=2)] = 24
    """Tokens of the target including its end-of-sequence id; published as ``ctx.target_length``."""
    train_size: PositiveInt = 5000
    """Training pairs at most (the task has 2700 distinct sources over all splits)."""
    eval_size: PositiveInt = 300
    """Pairs in each of the validation and test splits at most."""
    seed: Seed = 0
    """Seed of the order of the pairs (the splits depend on the source text only)."""
    val_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.1
    """Share of the sources hashed to the validation split."""
    test_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.1
    """Share of the sources hashed to the test split."""
    batch_size: PositiveInt = 64
    """Training batch size."""
    eval_batch_size: PositiveInt | None = None
    """Evaluation batch size (None: batch_size)."""

    def __post_init__(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got {self.val_fraction} + {self.test_fraction}")

    def bind(self, ctx):
        ctx.set("source_length", self.source_length)
        ctx.set("target_length", self.target_length)


@hookimpl
def genloom_heads():
    return [records.head("edit5", f"{_P}.head:build", Edit5HeadConfig, "EdiT5 head: keep/delete tagger, pointer network over kept tokens, insertion logits.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("edit5", f"{_P}.objective:build", Edit5ObjectiveConfig, "EdiT5: tagging + pointer re-ordering + insertion losses on gold edits.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("edit5", f"{_P}.decoder:build", Edit5DecoderConfig, "EdiT5: one NAR pass (tags, pointer order) + autoregressive insertions only.", PAPER)]


@hookimpl
def genloom_datasets():
    return [records.dataset("edit-fusion", f"{_P}.data:build", EditFusionConfig, "Synthetic sentence fusion (deletions, an insertion, re-ordering), split by source.", PAPER)]
