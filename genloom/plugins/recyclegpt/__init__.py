"""RecycleGPT: decoding with a recyclable module that reuses the last full-model hidden state.

What the paper does. Adjacent tokens are strongly dependent, so the hidden state the full model
computed for one position still carries most of what is needed for the next. RecycleGPT adds a
small recyclable module that takes that hidden state together with the embedding of the token just
generated and predicts the following token; decoding alternates one full-stack step with one
recycled step, so about half of the tokens cost only the small module (about 1.4x faster in the
paper), with a small loss of quality. The module is trained with the model on the same text.

What this implementation does.

- head ``recyclegpt``: wraps any registered head (``base`` node: embedding, output projection)
  and adds the recyclable module ``h' = h + W2 gelu(W1 [norm(h); norm(e)])`` read out by the base
  head's projection; ``forward`` is the base head's, so the head works with every other objective
  and decoder; ``recycle_logits(h, token)`` is the recycled prediction.
- objective ``recyclegpt``: next-token cross-entropy of the base head plus the recycled
  cross-entropy (at position t, ``h_t`` and the embedding of token t+1 predict token t+2), with
  the base frozen (``freeze_base``) or trained jointly.
- decoder ``recyclegpt``: per round, token 1 from the full model's last hidden state, token 2 from
  the recyclable module; both are then fed to the full stack in one pass (with the KV cache), so n
  generated tokens cost ``ceil(n / 2)`` full-stack passes (the prompt prefill included).

What it simplifies. The paper's recyclable module is a transformer layer over the recycled
states; here it is one residual feed-forward layer over the last hidden state and the token
embedding (the recycled prediction therefore depends on nothing else). Strict alternation only
(the paper also discusses recycling more than one step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, PositiveInt

_P = "genloom.plugins.recyclegpt"

PAPER = records.Paper(
    title="RecycleGPT: An Autoregressive Language Model with Recyclable Module",
    year=2023,
    arxiv="2308.03421",
)


@dataclass
class RecycleHeadConfig:
    """A registered head plus the recyclable module (previous hidden state + new token -> next token)."""

    base: dict[str, Any] = records.node_field("head", {"name": "lm"})
    """The base head (embedding, output projection shared by the recycled prediction), as a component node."""
    hidden: PositiveInt | None = None
    """Hidden width of the recyclable module's feed-forward layer (None: 4 x d_model)."""

    def __post_init__(self):
        if "name" not in self.base:
            raise ValueError("base must be a component node with a 'name'")
        if self.hidden is not None and (isinstance(self.hidden, bool) or self.hidden < 1):
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")

    def bind(self, ctx):
        registry = getattr(ctx, "registry", None)
        if registry is not None:
            from genloom.core.config import validate_node

            spec = validate_node(registry, "head", self.base, "head.base")
            if hasattr(spec.config, "bind"):
                spec.config.bind(ctx)


@dataclass
class RecycleObjectiveConfig:
    """Train the recyclable module (and optionally the base model) on the token two ahead."""

    freeze_base: bool = False
    """Train only the recyclable module; False trains the base model jointly on its next-token loss."""
    recycle_weight: NonNegativeFloat = 1.0
    """Weight of the recycled cross-entropy (token t+2 from h_t and token t+1)."""

    def __post_init__(self):
        if self.recycle_weight < 0:
            raise ValueError(f"recycle_weight must be >= 0, got {self.recycle_weight}")


@dataclass
class RecycleDecoderConfig:
    """Alternate one full-stack step and one recycled step."""

    greedy: bool = True
    """Argmax at both steps; False samples from the (processed) head distribution."""


@hookimpl
def genloom_heads():
    return [records.head("recyclegpt", f"{_P}.head:build_head", RecycleHeadConfig,
                         "A base head plus the recyclable module: previous hidden state + new token embedding -> next token.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("recyclegpt", f"{_P}.objective:build", RecycleObjectiveConfig,
                              "Next-token cross-entropy plus the recycled cross-entropy on the token two ahead.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("recyclegpt", f"{_P}.decoder:build", RecycleDecoderConfig,
                            "Alternate full-stack and recycled steps: ceil(n/2) full passes for n tokens.", PAPER)]
