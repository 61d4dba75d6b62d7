"""ADED: adaptive draft-verification with an online tri-gram model of the target.

What the paper does. Speculative decoding without a trained draft model: ADED approximates the
LLM's output distribution with a tri-gram matrix that is updated from the LLM's own outputs while
decoding, so the drafts adapt to the model and the context. Drafts are built by a tree search that
balances exploitation (likely tri-gram continuations) and exploration (candidates not tried
recently), and the LLM verifies them in parallel; verification keeps the output unchanged.

What this implementation does.

- ``trigram.py``: the tri-gram/bi-gram counts of the target's stream (the prompt and every
  committed token), with a PUCT score ``p(c) (1 + exploration sqrt(N) / (1 + n_c))`` over a
  context's candidates (``n_c``: times ``c`` was drafted in that context, ``N``: their sum).
- decoder ``aded``: a static draft tree (children per depth) filled from the table, verified by
  the target in one pass through :class:`genloom.toolkit.tree.TreeDecoder` (greedy: the output is
  the target's greedy decoding token for token); the committed tokens update the table after
  every step, and the table persists across ``generate`` calls of one decoder (``persist``).

What it simplifies. The paper's Monte-Carlo tree search over draft sequences is reduced to a
per-node PUCT choice on a static tree shape; the table is a sparse dictionary of counts (no matrix
compression); greedy verification only (no sampling mode).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

_P = "genloom.plugins.aded"

PAPER = records.Paper(
    title="Adaptive Draft-Verification for Efficient Large Language Model Decoding",
    year=2024,
    arxiv="2407.12021",
)


@dataclass
class AdedConfig:
    """ADED decoding: tri-gram drafts from the target's own outputs, verified as a token tree."""

    branching: tuple[int, ...] = (3, 2, 2, 1)
    """Children per node at each depth of the draft tree (every path drafts ``len(branching)`` tokens)."""
    exploration: float = 0.5
    """Weight of the exploration bonus in the PUCT score (0: always the most frequent continuations)."""
    persist: bool = True
    """Keep the tri-gram table across ``generate`` calls of this decoder (it adapts over requests)."""

    def __post_init__(self):
        if isinstance(self.branching, int) or not self.branching:
            raise ValueError(f"branching must be a non-empty list of children per depth, got {self.branching!r}")
        self.branching = tuple(self.branching)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.branching):
            raise ValueError(f"branching must hold integers >= 1 (children per node at each depth), got {self.branching!r}")
        if self.exploration < 0:
            raise ValueError(f"exploration must be >= 0, got {self.exploration}")


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "aded",
            f"{_P}.decoder:build",
            AdedConfig,
            "ADED: drafts from a tri-gram table of the target's outputs updated online, verified as a token tree (greedy, exact).",
            PAPER,
        )
    ]
