"""MLKV: Multi-Layer Key-Value heads (2024).

What the paper does. Multi-query and grouped-query attention share key/value heads among the query
heads of one layer. MLKV shares them across layers as well: only ``m`` of the ``L`` layers have
key/value projections, each with ``g`` heads, and every other layer attends with the keys/values of
the last layer below it that has them, so a group of consecutive layers reads one set of cached
keys/values. The KV cache then holds ``m * g`` heads per token instead of ``L * h`` (MHA), down to
one head for the whole model (``m = g = 1``); the paper uptrains Pythia models into this layout.

What this implementation does. Backbone ``mlkv`` builds a registered attention backbone (default the
baseline ``transformer``; its ``n_kv_heads`` is ``g``) with the core's cross-layer sharing: the
``L`` layers are split into ``kv_layers = m`` consecutive groups (as even as possible), the first
layer of a group owns key/value projections and cache storage, the others have none and read its
cache tensors (``KVCache.read``: the same storage, so the saving shows in ``cache.layer_nbytes()``).

What it simplifies. The model is trained from scratch in this layout (no uptraining of a pretrained
MHA checkpoint), and groups are consecutive and near-equal in size, one of the paper's layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveInt

_P = "genloom.plugins.mlkv"

PAPER = records.Paper(title="MLKV: Multi-Layer Key-Value Heads for Memory Efficient Transformer Decoding", year=2024, arxiv="2406.09297")


@dataclass
class MLKVConfig:
    """An attention backbone whose key/value heads are shared by groups of consecutive layers."""

    base: dict[str, Any] = records.node_field("backbone", {"name": "transformer"})
    """The backbone to build (it needs a ``kv_source`` field); its ``n_kv_heads`` is the paper's ``g``."""
    kv_layers: PositiveInt = 1
    """``m``: layers that have key/value projections; the others read the last of them below (at most n_layers)."""

    def bind(self, ctx):
        from genloom.toolkit.kv_sharing import bind_base

        bind_base(ctx, self.base)


@hookimpl
def genloom_backbones():
    return [records.backbone("mlkv", f"{_P}.model:build", MLKVConfig,
                             "MLKV: m of the L layers own key/value heads; consecutive layer groups read the same cached keys/values.", PAPER)]
