"""OTSeq2Set: an optimal-transport enhanced sequence-to-set model (EMNLP 2022).

What the paper does. Multi-label classification as generation: a sequence-to-sequence model emits
the relevant labels one at a time, but the labels are a *set*, so no target order should be
imposed. The model is trained in student-forcing mode (its own predictions, not the gold labels,
are fed back), and the loss matches the predicted positions to the gold labels with a minimum-cost
bipartite matching (Hungarian algorithm), which makes it invariant to any permutation of the
labels. An optimal-transport distance between the predictions and the labels in a semantic label
embedding space pulls the predictions towards the closest gold labels.

What this implementation does. Objective ``otseq2set`` (``objective.py``) on source-conditioned
data (``seq2seq`` with ``task: letter-set``: the distinct letters of a string) and any backbone
that serves the prefix pattern: greedy student-forcing rollout without gradients, one forward
pass with gradients over the rollout, per row the Hungarian matching of positions to labels on
``-log p`` (scipy's ``linear_sum_assignment``, ``matching.py``), an end-of-sequence term, and a
Sinkhorn optimal-transport term between the predictions' expected label embeddings and the label
embeddings (the head's embedding matrix; cost 1 - cosine). Decoding is any autoregressive decoder
with ``generate(source=...)`` (e.g. ``greedy``).

What it simplifies at toy scale. Letters of a string stand in for the paper's labels of
documents; the rollout runs exactly (largest set + 1) steps; the label embeddings are the tied
token embeddings rather than separately trained label vectors; the OT term uses uniform masses
and a fixed number of Sinkhorn iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, PositiveFloat

_P = "genloom.plugins.otseq2set"

PAPER = records.Paper(
    title="OTSeq2Set: An Optimal Transport Enhanced Sequence-to-Set Model for Extreme Multi-label Text Classification",
    year=2022,
    arxiv="2210.14523",
)


@dataclass
class OTSeq2SetConfig:
    """Student forcing, Hungarian matching loss and an optimal-transport term."""

    ot_weight: NonNegativeFloat = 1.0
    """Weight of the optimal-transport term (0 turns it off)."""
    epsilon: PositiveFloat = 0.05
    """Entropic regularisation of the Sinkhorn transport (smaller: closer to exact OT, slower to converge)."""

    def __post_init__(self):
        if self.ot_weight < 0:
            raise ValueError(f"ot_weight must be >= 0, got {self.ot_weight}")
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")


@hookimpl
def genloom_objectives():
    return [records.objective("otseq2set", f"{_P}.objective:build", OTSeq2SetConfig, "Sequence-to-set: student forcing, Hungarian matching loss (permutation-invariant), optimal-transport term.", PAPER)]
