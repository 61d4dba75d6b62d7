"""Config of speculative Jacobi decoders (torch-free, so listing plugins stays light).

The runtime lives in :mod:`genloom.toolkit.jacobi`.
"""

from __future__ import annotations

import dataclasses

from genloom.core.constraints import PositiveInt


@dataclasses.dataclass
class JacobiConfig:
    """Base config of decoders in which the target drafts for itself by Jacobi iteration."""

    window: PositiveInt = 8
    """Draft tokens carried from one iteration to the next (the Jacobi window); the target verifies
    ``window + 1`` positions per pass."""
