"""FiRST: Finetuning Router-Selective Transformers (2024).

What the paper does. Every layer of a pretrained decoder gets a small router that reads the layer's
input hidden states and decides whether to run the layer or skip it (identity). The decisions are
taken on the *prompt*, at prefill, and stay fixed for the whole decode, so a skipped layer never
computes for any generated token and its KV cache is never written: skipping stays compatible with
KV caching and gives a per-input (not fixed) subset of layers. Routers are trained with the model
(LoRA) on a quality loss plus a term that rewards skipping.

What this implementation does.

- backbone ``first-router``: a registered attention backbone (default the baseline ``transformer``)
  plus one router per layer, ``p_i = sigmoid(w_i . mean_prompt(h_i) + b_i)``, with ``h_i`` the layer's
  input averaged over the prompt's real tokens. In decoding the backbone hands its caches a router
  (the core's prompt-time layer routing, ``KVCache.router``/``route``): during the prefill layer i
  asks it once, and rows with ``p_i < threshold`` skip layer i from then on (the block runs on the
  other rows only and writes only their keys/values). In training the layer is mixed softly,
  ``h_i + p_i (block(h_i) - h_i)`` (with ``p_i`` from the sequence so far, so the gate stays causal);
- objective ``first-router``: the next-token objective (through the registry) plus
  ``skip_weight * mean_i p_i``, the pressure to skip.

What it simplifies. Routers are trained with the whole model (or, with ``freeze_base``, alone on a
trained one) instead of with LoRA adapters; the soft gate is the relaxation used for training, and
a single threshold turns it into decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genloom.core import hookimpl, records
from genloom.core.constraints import AnyFloat, NonNegativeFloat, Probability

_P = "genloom.plugins.first_router"

PAPER = records.Paper(title="FiRST: Finetuning Router-Selective Transformers for Input-Adaptive Latency Reduction", year=2024, arxiv="2410.12513")


@dataclass
class FirstRouterConfig:
    """A backbone whose layers are skipped per input by routers read on the prompt."""

    base: dict[str, Any] = records.node_field("backbone", {"name": "transformer"})
    """The backbone whose layers are routed (its ``layers`` are its residual blocks; the baseline transformer)."""
    threshold: Probability = 0.5
    """A row skips layer i when its router's probability on the prompt is below this (0: never skip)."""
    router_bias: AnyFloat = 3.0
    """Initial router bias: sigmoid(3) = 0.95, so a new model runs every layer."""
    freeze_base: bool = False
    """Train the routers only (on a trained base, as FiRST fine-tunes a pretrained model)."""

    def bind(self, ctx):
        from genloom.toolkit.kv_sharing import node

        registry = getattr(ctx, "registry", None)
        if registry is None:
            return
        from genloom.core.config import validate_node

        spec = validate_node(registry, "backbone", node(self.base), "backbone.base")
        if hasattr(spec.config, "bind"):
            spec.config.bind(ctx)


@dataclass
class FirstRouterObjectiveConfig:
    """Next-token loss plus a reward for skipping layers."""

    skip_weight: NonNegativeFloat = 0.1
    """Weight of the mean router probability (the expected fraction of layers run) in the loss."""


@hookimpl
def genloom_backbones():
    return [records.backbone("first-router", f"{_P}.model:build", FirstRouterConfig,
                             "FiRST: per-layer routers read the prompt at prefill; skipped layers never compute nor write their cache.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("first-router", f"{_P}.objective:build", FirstRouterObjectiveConfig,
                              "Next-token loss plus skip_weight x the expected fraction of layers run (FiRST's latency term).", PAPER)]
