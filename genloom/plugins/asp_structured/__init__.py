"""Autoregressive Structured Prediction with Language Models (Liu et al., EMNLP Findings 2022).

What the paper does. A structure over a text (entity spans, relations, coreference chains) is
written as a sequence of actions taken left to right over the input: copy the next input token,
open a span ``[``, close it ``]`` with a label, and, from a span just closed, point to an earlier
span with a relation label. A pretrained language model predicts the actions autoregressively,
conditioned on the input; its head is *conditionally structured*: the action kind comes from the
current hidden state, and a close's label and a pointer's target come from the hidden states of
the actions that opened and closed the spans involved (span representations scored against each
other). Decoding is constrained to actions that keep the output a valid structure over the input,
so the output always reproduces the input and is well formed. The paper reaches the state of the
art on named entity recognition, end-to-end relation extraction and coreference resolution.

What this implementation does.

- ``actions.py``: the action vocabulary (:class:`ActionLayout`: the tokenizer's ids for copies
  and the end, then open, one close per label, one link id per (earlier span, relation)),
  ``encode(structure, tokens)`` (the canonical sequence), ``decode(actions, tokens)`` (exactly
  back: ``decode(encode(s)) == s``) and the state machine ``ActionState`` that defines which
  actions are valid next; ``render`` prints a sequence with its brackets.
- tokenizer ``asp-bytes`` (``tokenizer.py``): bytes for the text plus the action ids of the
  layout named by its config (labels, relations, ``max_spans``); ``decode`` renders the structure.
- data set ``asp-code`` (``data.py``): windows of standard-library code with their exact
  structure from the syntax tree (spans ``store``/``load``/``string``/``number``/``call``, the
  calls nesting their parts; each name mention linked to the previous mention of the same
  identifier, relation ``def`` or ``coref``), split by source file; the target is the action
  sequence and the source block the text (the prefix-LM form of conditioning).
- head ``asp`` (``head.py``): action-kind logits, label scores of ``[h_open ; h_now]``, pointer
  scores of a query from ``h_now`` against keys ``W [h_open_j ; h_close_j]`` of earlier spans
  (one bilinear form per relation), masked to valid targets.
- objective ``asp`` (``objective.py``): teacher-forced action-kind cross-entropy + label
  cross-entropy at closes + pointer cross-entropy at links, under ``prefix(source_length)``;
  ``genloom evaluate`` decodes the held-out split and reports span and link F1 (``evaluate.py``).
- decoder ``asp`` (``decoder.py``): one action per step from the head's factorised distribution,
  with the state machine's mask (``constrained``) and a budget rule so the output always finishes
  within ``max_new_tokens``; greedy or sampled.
- processor ``asp-constraints`` (``processor.py``): the same mask for any model over the action
  vocabulary (e.g. a flat ``lm`` head trained with ``next-token`` on the same data).

What it simplifies at toy scale. A small transformer trained from scratch reads the text as a
prefix block instead of a pretrained T5/Flan-T5 encoder-decoder. Spans are well nested and a close
always ends the innermost open span, so the paper's bracket-pairing pointer (which can pair a ``]``
with any open ``[``, for crossing spans) is not needed and not built. Links are produced right after
their source span closes, to spans that closed before it, in (target, relation) order, each at most
once. The task is code, not English: spans and links come exactly from Python's syntax tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from genloom.core import hookimpl, records
from genloom.core.errors import ConfigError
from genloom.core.constraints import Interval, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

_P = "genloom.plugins.asp_structured"

CODE_LABELS = ("store", "load", "string", "number", "call")
"""The span labels of the ``asp-code`` task."""
CODE_RELATIONS = ("def", "coref")
"""The link relations of the ``asp-code`` task."""


def check_layout(layout, path: str) -> None:
    """The layout names every label and relation of the asp-code task, else a ConfigError at ``path``."""
    missing = [x for x in CODE_LABELS if x not in layout.labels] + [x for x in CODE_RELATIONS if x not in layout.relations]
    if missing:
        raise ConfigError(f"the tokenizer's labels/relations lack {missing} (the asp-code task uses labels "
                          f"{list(CODE_LABELS)} and relations {list(CODE_RELATIONS)})", path=path)

PAPER = records.Paper(title="Autoregressive Structured Prediction with Language Models", year=2022, arxiv="2210.14698")


@dataclass
class AspTokenizerConfig:
    """Bytes plus the action vocabulary: open, one close per label, one link per (earlier span, relation)."""

    labels: list[str] = field(default_factory=lambda: list(CODE_LABELS))
    """Span labels (one close action each)."""
    relations: list[str] = field(default_factory=lambda: list(CODE_RELATIONS))
    """Link relations."""
    max_spans: PositiveInt = 24
    """Most spans in one structure (a link names its target by its index in close order)."""

    def __post_init__(self):
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be a non-empty list of distinct names, got {self.labels}")
        if not self.relations or len(set(self.relations)) != len(self.relations):
            raise ValueError(f"relations must be a non-empty list of distinct names, got {self.relations}")


@dataclass
class AspCodeConfig:
    """Windows of standard-library code with their exact spans, relations and coreference links."""

    source_length: PositiveInt = 64
    """Bytes of the source block (the longest window); published as ``ctx.source_length``."""
    target_length: Annotated[int, Interval(ge=2)] = 112
    """Actions of the target including the end (longer examples are left out); ``ctx.target_length``."""
    max_lines: PositiveInt = 3
    """Most consecutive lines in one window."""
    max_per_file: PositiveInt = 100
    """Most examples taken from one file (so that a few large tables do not dominate)."""
    train_size: PositiveInt = 20000
    """Training examples (fewer if the training files hold fewer)."""
    eval_size: PositiveInt = 500
    """Examples in each of the validation and test splits."""
    val_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.1
    """Share of the files in the validation split."""
    test_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.1
    """Share of the files in the test split."""
    batch_size: PositiveInt = 32
    eval_batch_size: PositiveInt | None = None
    num_workers: NonNegativeInt = 0

    def __post_init__(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got {self.val_fraction} + {self.test_fraction}")
        if self.target_length <= self.source_length:
            raise ValueError(f"target_length ({self.target_length}) must exceed source_length ({self.source_length}): the actions copy the whole source")

    def bind(self, ctx):
        ctx.set("source_length", self.source_length)
        ctx.set("target_length", self.target_length)
        tokenizer = ctx.get("tokenizer")
        if tokenizer is None:  # bound before any tokenizer exists (reading a run's tokenizer back)
            return
        layout = getattr(tokenizer, "layout", None)
        if layout is None:
            raise ConfigError("asp-code needs the 'asp-bytes' tokenizer (its vocabulary holds the action ids)", path="tokenizer")
        check_layout(layout, "tokenizer")


@dataclass
class AspHeadConfig:
    """ASP's conditionally structured head: action kinds, span labels, span-to-span pointers."""

    pointer_dim: PositiveInt = 64
    """Width of the pointer's query and span keys."""
    init_std: PositiveFloat = 0.02
    """Standard deviation of the initial action embeddings."""


@dataclass
class AspObjectiveConfig:
    """Action-kind cross-entropy + label cross-entropy at closes + pointer cross-entropy at links."""

    label_weight: NonNegativeFloat = 1.0
    """Weight of the label term (1: the exact negative log-likelihood)."""
    pointer_weight: NonNegativeFloat = 1.0
    """Weight of the pointer term (1: the exact negative log-likelihood)."""


@dataclass
class AspDecoderConfig:
    """One action per step from the structured head; the state machine masks invalid actions."""

    greedy: bool = True
    """Take the most likely allowed action (false: draw it with the session's generator)."""
    constrained: bool = True
    """Mask every action that would not keep the output a valid structure over the input (false:
    the raw scores, for comparison)."""


@dataclass
class AspConstraintsConfig:
    """The state machine's mask for any model over the action vocabulary."""

    max_actions: PositiveInt | None = None
    """Actions an output may take, the end included (null: the data's ``target_length``); only
    actions after which the structure can be completed within it are allowed."""


@hookimpl
def genloom_tokenizers():
    return [records.tokenizer("asp-bytes", f"{_P}.tokenizer:build", AspTokenizerConfig, "Bytes plus ASP's action ids (open, labelled closes, span pointers); decodes to bracketed text.", PAPER)]


@hookimpl
def genloom_datasets():
    return [records.dataset("asp-code", f"{_P}.data:build", AspCodeConfig, "Standard-library code windows with exact spans, relations and coreference links (split by file).", PAPER)]


@hookimpl
def genloom_heads():
    return [records.head("asp", f"{_P}.head:build", AspHeadConfig, "ASP's conditionally structured head: action kinds, span labels, span-pointer links.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("asp", f"{_P}.objective:build", AspObjectiveConfig, "Teacher-forced action NLL: kind + label + pointer cross-entropy.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("asp", f"{_P}.decoder:build", AspDecoderConfig, "Constrained structured decoding: copy/open/close/link actions, valid by construction.", PAPER)]


@hookimpl
def genloom_logits_processors():
    return [records.processor("asp-constraints", f"{_P}.processor:build", AspConstraintsConfig, "Mask every action that would not keep the output a valid structure over its source.", PAPER)]
