"""Config of tree speculative decoders (torch-free, so listing plugins stays light).

The runtime lives in :mod:`genloom.toolkit.tree`.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class TreeDraftConfig:
    """Base config of decoders that draft a token tree with a second model and verify it in one pass."""

    draft: str | dict[str, Any] | None = None
    """The draft model: a run directory, a weights file inside one or a config .yaml (str), or a
    nested model config {tokenizer, head, backbone, ...}. Its vocabulary must be the target's, and
    its backbone must serve the tree attention pattern (a transformer does)."""
    branching: tuple[int, ...] = (2, 2, 1)
    """Children per node at each depth: [2, 2, 1] drafts a tree of depth 3 with 4 leaves (9 nodes
    with the root). Every root-to-leaf path has ``len(branching)`` drafted tokens."""
    greedy: bool = False
    """Draft the top-k children and verify with the target's argmax: the output equals the target's
    greedy decoding. Otherwise children are drawn i.i.d. from the draft and verified by multi-draft
    rejection sampling: the output law is the target's."""
    seed: int = 0
    """Seed for the initial weights of a draft built from a nested config."""

    def __post_init__(self):
        if isinstance(self.branching, int) or not self.branching:
            raise ValueError(f"branching must be a non-empty list of children per depth, got {self.branching!r}")
        self.branching = tuple(self.branching)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.branching):
            raise ValueError(f"branching must hold integers >= 1 (children per node at each depth), got {self.branching!r}")
        if self.draft is not None and not isinstance(self.draft, (str, dict)):
            raise ValueError(f"draft must be a path (str) or a nested model config (mapping), got {type(self.draft).__name__}")
