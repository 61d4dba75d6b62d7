"""AbbIE: Autoregressive Block-Based Iterative Encoder for Efficient Sequence Modeling (2025).

What the paper does. AbbIE is a recursive generalisation of the decoder-only Transformer: the
layers are split into a head block, a *body* block and a tail block, and the body is applied r
times with shared weights, iterating in latent space. Compute scales with r at test time while
the parameter count does not; trained with only r = 2 the model *upward generalises* to larger r
(better perplexity, up to 12% better in-context learning), without a special data set or training
protocol.

What this implementation does. :mod:`.model` asks the registry for three ``transformer``
backbones (the baseline's causal Llama-style blocks; this plugin imports none of their code) of
``head_layers``, ``body_layers`` and ``tail_layers`` layers, the first two without their final
norm, and composes them as ``tail(body^r(head(x)))``. ``iterations`` is r in training;
``test_iterations`` (if set) is used in evaluation mode, so a model trained at r = 2 runs at any r
(the weights have no dependence on r). The incremental state is one KV cache per block
application (head, r body passes, tail), so every decoder runs on it; rollback goes back any
number of steps (each cache can). With r = 1 the model is exactly a standard transformer of
head + body + tail layers.

What it simplifies. No input injection into the iterated body (the paper's injection details
are uncertain to us; the tests check the properties that hold without it), no dynamic stopping of
iterations per task, tiny widths; the ``abbie`` record builds the blocks from the baseline's
``transformer`` by name, so their config fields (heads, RoPE...) are passed through ``block``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genloom.core import hookimpl, records

PAPER = records.Paper(title="AbbIE: Autoregressive Block-Based Iterative Encoder for Efficient Sequence Modeling", year=2025, arxiv="2507.08567")


@dataclass
class AbbIEConfig:
    """Head, iterated body and tail blocks of causal transformer layers."""

    d_model: int = 128
    """Model width; published to later components as ``ctx.d_model``."""
    head_layers: int = 1
    """Layers before the iterated body."""
    body_layers: int = 2
    """Layers of the body block, applied ``iterations`` times with shared weights."""
    tail_layers: int = 1
    """Layers after the body."""
    iterations: int = 2
    """r, body applications in training (the paper trains with 2)."""
    test_iterations: int | None = None
    """r in evaluation mode (None: ``iterations``); any value works without retraining."""
    block: dict[str, Any] = field(default_factory=lambda: {"name": "transformer", "n_heads": 4})
    """The block component and its fields (d_model and n_layers are set from the fields above)."""

    def __post_init__(self):
        for name in ("d_model", "body_layers", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("head_layers", "tail_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.test_iterations is not None and self.test_iterations < 1:
            raise ValueError(f"test_iterations must be at least 1 (or null), got {self.test_iterations}")
        if not isinstance(self.block, dict) or "name" not in self.block:
            raise ValueError(f"block must be a component node with a name, e.g. {{name: transformer, n_heads: 4}}, got {self.block!r}")
        for key in ("d_model", "n_layers", "final_norm"):
            if key in self.block:
                raise ValueError(f"block.{key} is set by abbie (from d_model and head/body/tail_layers); remove it")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "abbie",
            "genloom.plugins.abbie.model:build",
            AbbIEConfig,
            "AbbIE: a body block of causal transformer layers iterated r times with shared weights; any r at test time.",
            PAPER,
        )
    ]
