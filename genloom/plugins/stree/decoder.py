"""The ``stree`` decoder: :class:`genloom.toolkit.tree.TreeSpeculativeDecoder` on the core loop.

Per round: the draft drafts a static token tree level by level; the target gives every node's
distribution in one pass -- a Mamba target through ``forward_tree`` (accumulated state-transition
products, the ``tree_selective_scan`` op of this plugin), a transformer through the tree attention
pattern, any other backbone by verifying each root-to-leaf path as a batch row; the tree is walked
from the root (greedy, or multi-draft rejection sampling); the target keeps the accepted path's state.
"""

from __future__ import annotations

from genloom.toolkit.tree import TreeSpeculativeDecoder


def build(config, ctx):
    return TreeSpeculativeDecoder(config, ctx)
