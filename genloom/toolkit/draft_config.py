"""Config of draft-model decoders (torch-free, so listing plugins stays light).

The runtime lives in :mod:`genloom.toolkit.draft`.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from genloom.core.constraints import PositiveInt, Seed


@dataclasses.dataclass
class DraftModelConfig:
    """Base config of decoders that draft with a second model (see ``genloom.toolkit.draft.DraftModelDecoder``)."""

    draft: str | dict[str, Any] | None = None
    """The draft model: a run directory, a weights file inside one or a config .yaml (str), or a
    nested model config {tokenizer, head, backbone, ...} (an untrained draft, seeded by ``seed``).
    Its vocabulary must be the target's."""
    gamma: PositiveInt = 4
    """Draft tokens proposed per round (the target verifies gamma + 1 positions per pass)."""
    seed: Seed = 0
    """Seed for the initial weights of a draft built from a nested config."""

    def __post_init__(self):
        if self.gamma < 1:
            raise ValueError(f"gamma must be at least 1, got {self.gamma}")
        if self.draft is not None and not isinstance(self.draft, (str, dict)):
            raise ValueError(f"draft must be a path (str) or a nested model config (mapping), got {type(self.draft).__name__}")
