"""APAR: auto-parallel auto-regressive decoding of forked branches.

What the paper does. Many answers are hierarchical (lists, independent paragraphs). APAR
instruction-tunes a model on such data with control tokens: when the model emits ``[Fork]`` a new
branch starts (marked by ``[Child]``) and the parent branch goes on; the branches are then decoded
in parallel, each attending only to its ancestors (the shared prefix and the tokens on its own path
from the root), never to its siblings, through a tree attention mask and a paged KV cache. Decode
steps drop from the total token count to the longest branch (about 2x faster generation in the
paper, with KV-cache memory and attention work reduced too).

What this implementation does.

- ``branches.py``: :func:`decode_branches`: greedy parallel decoding of one prompt into a tree of
  branches; each step runs the model once over the prompt and all generated nodes with the core's
  tree attention pattern (:func:`genloom.core.pattern.tree`: a node sees the prompt and its
  ancestors, model positions are depths), and every live branch takes one token. The fork token
  starts a branch whose first node is the child token; a branch ends at EOS or after
  ``max_branch_tokens`` generated tokens.
- decoder ``apar``: the shared-loop decoder; it commits each prompt's branches one after another.

What it simplifies. No instruction tuning: ``fork_id`` and ``child_id`` are token ids of the
model's vocabulary chosen in the config (a trained APAR model would have dedicated control tokens).
No KV cache: every step recomputes the prompt and the tree (the tree pattern is the mechanism; the
paged cache is an efficiency layer left out), so a step's work grows with the tree. Greedy only;
rows of a batch are decoded one after another.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeInt, PositiveInt

_P = "genloom.plugins.apar"

PAPER = records.Paper(
    title="APAR: LLMs Can Do Auto-Parallel Auto-Regressive Decoding",
    year=2024,
    arxiv="2401.06761",
)


@dataclass
class AparConfig:
    """Parallel decoding of forked branches (siblings mutually invisible)."""

    fork_id: NonNegativeInt = 10
    """Token id that forks a new branch when a branch emits it."""
    child_id: NonNegativeInt = 9
    """Token id placed as the first node of every forked branch (the paper's [Child])."""
    max_branch_tokens: PositiveInt = 64
    """Tokens a branch may generate before it is closed."""
    max_branches: PositiveInt = 8
    """Branches per prompt, the main one included; further fork tokens start nothing."""

    def __post_init__(self):
        for name in ("fork_id", "child_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a token id >= 0, got {value!r}")
        for name in ("max_branch_tokens", "max_branches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.fork_id == self.child_id:
            raise ValueError(f"fork_id and child_id must differ, both are {self.fork_id}")


@hookimpl
def genloom_decoders():
    return [records.decoder("apar", f"{_P}.decoder:build", AparConfig,
                            "APAR: fork tokens start branches decoded in parallel under tree attention (siblings invisible); steps = longest branch.", PAPER)]
