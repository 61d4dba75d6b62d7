"""STree: speculative tree decoding for state-space models.

What the paper does. Tree speculative decoding verifies a whole tree of drafted continuations in
one target pass; a Transformer does it with a tree attention mask, but an SSM has no mask to
change: its state summarises the past. STree computes every tree node's SSM state in one pass
from accumulated state-transition matrices: with diagonal transitions ``exp(delta A)``, the product
of the transitions from an ancestor a down to node i is ``exp(A (S_i - S_a))`` where ``S`` sums the
step sizes along the root-to-node path, so the tree becomes a masked (ancestor-matrix) product like
tree attention. The accepted path's state is kept and decoding continues from it.

What this implementation does.

- ``tree_scan.py``: the ``tree_selective_scan`` kernel op with two backends: ``recurrence`` (the
  definition: the recurrence node by node, each node continuing its parent's state) and
  ``accumulated`` (STree's accumulated transition products over the ancestor mask, all nodes at once).
- the ``mamba`` backbone's tree method (``Mamba.forward_tree``, used when this op is installed):
  every node's causal convolution reads its own root-to-node path and the scan goes through the op;
  ``MambaState.keep`` keeps the accepted path's conv window and SSM state.
- decoder ``stree``: tree speculative decoding from :mod:`genloom.toolkit.tree` (a draft model
  drafts a static tree, the target verifies it in one pass through its tree method, greedy or
  exact multi-draft rejection sampling).

What it simplifies. Mamba-1 blocks (diagonal A per channel) rather than Mamba-2 or hybrid stacks;
the transition products are materialised as an (N x N) masked tensor per channel and state index,
fine for trees of tens of nodes, where the paper fuses them into the scan kernel. The tree shape is
static (children per depth).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.toolkit.tree_config import TreeDraftConfig

_P = "genloom.plugins.stree"

PAPER = records.Paper(
    title="STree: Speculative Tree Decoding for Hybrid State-Space Models",
    year=2025,
    arxiv="2505.14969",
)


@dataclass
class StreeConfig(TreeDraftConfig):
    """Tree speculative decoding (fields draft, branching, greedy, seed from TreeDraftConfig)."""


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "stree",
            f"{_P}.decoder:build",
            StreeConfig,
            "STree: a draft token tree verified in one target pass, through an SSM's accumulated state transitions (exact).",
            PAPER,
        )
    ]


@hookimpl
def genloom_kernels():
    return [
        records.kernel("tree_selective_scan", "recurrence", f"{_P}.tree_scan:make_recurrence",
                       summary="Selective scan over a token tree, node by node (the definition).", paper=PAPER, priority=0),
        records.kernel("tree_selective_scan", "accumulated", f"{_P}.tree_scan:make_accumulated",
                       summary="STree: every tree node's SSM state from accumulated state-transition products.", paper=PAPER, priority=10),
    ]
