"""Blockwise Parallel Decoding for Deep Autoregressive Models (Stern, Shazeer and Uszkoreit, 2018).

What the paper does. A greedy autoregressive model p_1 is given k - 1 extra heads p_2..p_k that
predict, from the same hidden state, the tokens 2..k positions ahead. Decoding repeats three
substeps: *predict* a block of k tokens with the k heads, *verify* them in one parallel pass of the
base model (the base model's greedy choice at each block position), and *accept* the longest
prefix that agrees with those greedy choices. Because the first token is the base model's own
choice, at least one token is accepted per step, and the output is exactly greedy decoding's.
Merging the verify pass of one step with the predict pass of the next (every position of the
block gets all k heads' predictions in the same call) makes a step cost one model call. The
heads are a residual feed-forward layer each, sharing the output projection; they are trained
with the base model frozen or fine-tuned jointly. An approximate variant accepts a proposal if
it is in the base model's top-k (faster, slight quality change).

What this implementation does.

- head ``blockwise-parallel``: wraps any registered head (``base`` node: embedding, output
  projection, distribution) and adds ``block_size - 1`` residual feed-forward proposal layers read
  out by the base head's projection. ``forward`` returns the base next-token logits, so the head
  works with every other objective and decoder; ``proposal_logits`` gives the k heads.
- objective ``blockwise-parallel``: cross-entropy of head i on the token i positions ahead, with
  the base frozen (``freeze_base``, default) or trained jointly.
- decoder ``blockwise-parallel``: predict / verify / accept with the merged step on the core's
  propose/verify/commit loop; the KV cache is rolled back over rejected proposals
  (``state.rollback``). Exact acceptance by default (output equals greedy decoding token for
  token); ``accept_top_k > 1`` is the paper's top-k approximate acceptance.

What it simplifies. Greedy decoding only (as in the paper); one proposal layer per head rather
than the paper's single wide layer split k ways; the paper's distillation of the training data
with the base model and its minimum-block-size variant are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, PositiveInt

_P = "genloom.plugins.blockwise_parallel"

PAPER = records.Paper(title="Blockwise Parallel Decoding for Deep Autoregressive Models", year=2018, arxiv="1811.03115")


@dataclass
class BlockwiseHeadConfig:
    """A registered head plus k - 1 proposal heads for the tokens 2..k positions ahead."""

    base: dict[str, Any] = records.node_field("head", {"name": "lm"})
    """The base head (head 1: embedding, shared output projection), as a component node."""
    block_size: PositiveInt = 4
    """k: the number of heads, head 1 (the base head) included."""
    hidden: PositiveInt | None = None
    """Hidden width of each proposal head's residual feed-forward layer (None: 4 x d_model)."""

    def __post_init__(self):
        if "name" not in self.base:
            raise ValueError("base must be a component node with a 'name'")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")

    def bind(self, ctx):
        registry = getattr(ctx, "registry", None)
        if registry is not None:  # the base head's own bind runs now, like a top-level head's
            from genloom.core.config import validate_node

            spec = validate_node(registry, "head", self.base, "head.base")
            if hasattr(spec.config, "bind"):
                spec.config.bind(ctx)


@dataclass
class BlockwiseObjectiveConfig:
    """Train the proposal heads on the tokens 1..k positions ahead."""

    freeze_base: bool = True
    """Train only the proposal heads (the paper's frozen setting); False fine-tunes the base jointly."""
    base_weight: NonNegativeFloat = 1.0
    """Weight of head 1's (the base head's) loss when the base is trained jointly."""

    def __post_init__(self):
        if self.base_weight < 0:
            raise ValueError(f"base_weight must be >= 0, got {self.base_weight}")


@dataclass
class BlockwiseDecoderConfig:
    """Greedy blockwise parallel decoding (predict, verify, accept; merged steps)."""

    block_size: PositiveInt | None = None
    """Tokens proposed per step (None: all of the head's block_size heads)."""
    accept_top_k: PositiveInt = 1
    """1: exact acceptance (equals greedy decoding); > 1: accept a proposal in the base head's top-k."""

    def __post_init__(self):
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.accept_top_k < 1:
            raise ValueError(f"accept_top_k must be >= 1, got {self.accept_top_k}")


@hookimpl
def genloom_heads():
    return [records.head("blockwise-parallel", f"{_P}.heads:build_head", BlockwiseHeadConfig,
                         "A base head plus k-1 residual proposal heads for the tokens 2..k positions ahead.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("blockwise-parallel", f"{_P}.objective:build", BlockwiseObjectiveConfig,
                              "Cross-entropy of head i on the token i ahead (base frozen or joint).", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("blockwise-parallel", f"{_P}.decoder:build", BlockwiseDecoderConfig,
                            "Predict k tokens, verify in one pass, accept the longest greedy-agreeing prefix.", PAPER)]
