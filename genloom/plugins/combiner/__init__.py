"""Combiner: full attention transformer with sparse computation cost (Ren et al., 2021).

What the paper does. Attention is read as a conditional expectation E_{p(j|i)}[v_j], and p(j|i)
is factorised so that every query still reaches every allowed key, at sub-quadratic cost: the
keys are partitioned; a query attends *directly* to the keys of one part (its local region) and
*indirectly* to each other part Omega through an abstraction, with p(j|i) = p(Omega|i) q(j|Omega)
for j in Omega. The region's probability comes from the query and the region's key, the local
expectation q(j|Omega) is shared by all queries, so a region collapses to one key and one value
and the cost is O(L sqrt L) with regions of sqrt(L) keys (Combiner-Fixed; the paper also derives
axial, logsparse and mixture factorisations from other sparse patterns).

What this implementation does. Combiner-Fixed in its causal form. :mod:`.attention` holds the
``combiner_attention`` kernel op: regions of ``region_size`` positions; a query reads its own
region up to itself directly and every earlier region through the abstraction key (the region's
keys max-pooled) and value (the keys' values under the local expectation softmax(w . k_j), w a
learned vector per head), with the direct scores and the region scores normalised by one softmax.
Its ``reference`` backend builds the (L, L) weight matrix of that definition; its ``regions``
backend computes the output from the region summaries (L (S + R) scores). :mod:`.model` is the
``combiner`` backbone, a pre-norm causal transformer with rotary embeddings on that attention;
decoding uses the core KV cache and rebuilds the abstractions of earlier regions from it.

What it simplifies. Only the fixed (block) factorisation and causal attention; the region key is
a plain max-pool and the local expectation uses one learned vector per head (the paper's
choices for Combiner-Fixed as we read them); abstractions are recomputed from the cache for each
decoded token rather than stored; tiny widths. With ``region_size: 1`` every region is one key
and the op is exactly full causal attention (tested), which settles the property's open question.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt

PAPER = records.Paper(title="Combiner: Full Attention Transformer with Sparse Computation Cost", year=2021, arxiv="2107.05768")
_P = "genloom.plugins.combiner"


@dataclass
class CombinerConfig:
    """A causal pre-norm transformer with Combiner-Fixed attention."""

    d_model: PositiveInt = 64
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 2
    """Transformer blocks."""
    n_heads: PositiveInt = 4
    """Attention heads (must divide d_model into an even head width, for the rotary embedding)."""
    region_size: PositiveInt = 16
    """Positions per region (sqrt of the sequence length gives O(L sqrt L)); 1 is full causal attention."""
    ffn_mult: PositiveInt = 4
    """Feed-forward hidden width = ffn_mult x d_model."""
    rope_theta: PositiveFloat = 10000.0
    """Rotary embedding base."""
    norm_eps: PositiveFloat = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"n_heads must divide d_model into an even head width, got d_model={self.d_model}, n_heads={self.n_heads}")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "combiner",
            f"{_P}.model:build",
            CombinerConfig,
            "Combiner-Fixed: direct attention in the local region, indirect through max-pooled region abstractions; O(L sqrt L), full support.",
            PAPER,
        )
    ]


@hookimpl
def genloom_kernels():
    return [
        records.kernel("combiner_attention", "reference", f"{_P}.attention:make_reference",
                       summary="Combiner-Fixed causal attention from its (L, L) weight matrix; the definition.", paper=PAPER, priority=0),
        records.kernel("combiner_attention", "regions", f"{_P}.attention:make_regions",
                       summary="Combiner-Fixed causal attention from region summaries: L (S + R) scores.", paper=PAPER, priority=10),
    ]
