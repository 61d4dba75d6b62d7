"""SpecTr: Fast Speculative Decoding via Optimal Transport (Sun et al., NeurIPS 2023).

What the paper does. Speculative decoding's token-level rule is a *draft selection*: given draft
samples, output a token distributed exactly as the target ``p`` while returning one of the drafts
as often as possible. With one draft the best rule is the maximal coupling (speculative sampling,
acceptance ``1 - TV(p, q)``). SpecTr draws ``k`` i.i.d. draft candidates and casts the selection
as optimal transport with membership cost; the optimal plan is a linear program exponential in
``k``, so the paper proposes K-SEQ: visit the candidates in turn and return ``X_i`` with
probability ``min(1, p(X_i) / (rho q(X_i)))``; if none is returned, draw from a residual
distribution that makes the output exactly ``p``. With ``rho = rho*`` (the root of
``1 - (1 - beta(rho))^k = rho beta(rho)``, ``beta(rho) = sum_x min(q(x), p(x)/rho)``) the
acceptance is within ``1 - (1 - 1/k)^k >= 1 - 1/e`` of the optimum and never below single-draft
speculative sampling. At the sequence level ``k`` draft sequences of length ``gamma`` are
sampled i.i.d. from the draft model, verified by the target in one batched pass, and K-SEQ runs
position by position over the drafts that still agree with the tokens chosen so far.

What this implementation does.

- ``sampling.py``: ``beta``, ``rho*`` (the smooth piece of the piecewise ``beta`` holding the
  root, from sorted ratios ``p/q``, then the Illinois method on it), the residual, K-SEQ
  selection (batched, with a mask of the candidates still taking part) and the sequence-level
  block verification ``spectr_block``.
- ``optimal_transport.py``: the optimal selection's linear program (scipy, tiny vocabularies),
  for tests and reports; ``benchmark.py``: SpecTr vs speculative vs plain decoding on trained runs.
- decoder ``spectr`` on the core's propose/verify/commit loop: the batch is expanded to ``B * k``
  rows; the draft samples ``k`` independent continuations of every sequence; the target verifies
  all ``B * k`` draft rows in one forward pass; after the commit both states are reordered to
  the winning draft's row and rolled back (target) or restored and re-fed (draft). Processors
  apply to target and draft logits with each position's own history. Metrics as for
  ``speculative`` (target passes, acceptance lengths, per-position acceptance).

What it simplifies. The ``k`` drafts are verified as ``k`` batch rows (``k`` copies of the
target's cache) instead of one tree-attention pass over their shared prefixes; the paper's
numbers count passes, not FLOPs, so acceptance lengths are comparable, wall-clock is not. ``rho``
defaults to ``rho*`` per position (the paper's choice); a fixed ``rho`` is raised to ``rho*``
where it would not be valid, since an invalid ``rho`` gives a residual with negative mass. The
target's distribution is the softmax of its processed logits (a categorical head).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.toolkit.draft_config import DraftModelConfig
from genloom.core.constraints import PositiveFloat, PositiveInt

_P = "genloom.plugins.spectr"

PAPER = records.Paper(
    title="SpecTr: Fast Speculative Decoding via Optimal Transport",
    year=2023,
    arxiv="2310.15141",
)


@dataclass
class SpecTrConfig(DraftModelConfig):
    """SpecTr decoding: k i.i.d. draft sequences of length gamma, K-SEQ draft selection."""

    num_drafts: PositiveInt = 4
    """k, the number of i.i.d. draft sequences per round (1 is speculative sampling)."""
    rho: PositiveFloat | None = None
    """K-SEQ's rho in [1, k]; null: rho* per position (largest acceptance). A value is raised to
    rho* where it would not keep the output exact."""

    def __post_init__(self):
        super().__post_init__()
        if self.num_drafts < 1:
            raise ValueError(f"num_drafts must be at least 1, got {self.num_drafts}")
        if self.rho is not None and not 1.0 <= self.rho <= self.num_drafts:
            raise ValueError(f"rho must lie in [1, num_drafts] = [1, {self.num_drafts}], got {self.rho}")


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "spectr",
            f"{_P}.decoder:build",
            SpecTrConfig,
            "SpecTr: k i.i.d. draft sequences, K-SEQ optimal-transport draft selection (exact).",
            PAPER,
        )
    ]
