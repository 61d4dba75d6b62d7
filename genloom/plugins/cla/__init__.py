"""Cross-Layer Attention (2024).

What the paper does. Beyond sharing key/value heads among the query heads of a layer (MQA/GQA),
CLA shares them between adjacent layers: with sharing factor ``s`` only every ``s``-th layer
computes keys/values, and the ``s - 1`` layers above it attend with that layer's keys/values, so
the KV cache shrinks by another factor ``s`` (CLA2 halves it at nearly MQA's accuracy).

What this implementation does. Backbone ``cla`` builds a registered attention backbone (default the
baseline ``transformer``, with its ``n_kv_heads``) with the core's cross-layer sharing: layer ``i``
reads layer ``s * floor(i / s)``. Reading layers have no key/value projections and their cache is the
producer's tensors (same storage), so the cache holds exactly ``ceil(n_layers / s) * n_kv_heads``
key/value heads per token, read from ``cache.layer_nbytes()``.

What it simplifies. Only the paper's uniform adjacent-layer sharing (CLA-s) is offered, trained from
scratch; the paper's non-uniform configurations are ``kv_source`` layouts of the base transformer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveInt

_P = "genloom.plugins.cla"

PAPER = records.Paper(title="Reducing Transformer Key-Value Cache Size with Cross-Layer Attention", year=2024, arxiv="2405.12981")


@dataclass
class CLAConfig:
    """An attention backbone in which groups of ``sharing_factor`` adjacent layers share keys/values."""

    base: dict[str, Any] = records.node_field("backbone", {"name": "transformer"})
    """The backbone to build (it needs a ``kv_source`` field)."""
    sharing_factor: PositiveInt = 2
    """``s``: every s-th layer computes keys/values, the s - 1 layers above it reuse them (1: no sharing)."""

    def bind(self, ctx):
        from genloom.toolkit.kv_sharing import bind_base

        bind_base(ctx, self.base)


@hookimpl
def genloom_backbones():
    return [records.backbone("cla", f"{_P}.model:build", CLAConfig,
                             "Cross-Layer Attention: every s-th layer computes keys/values, the layers above it reuse them.", PAPER)]
