"""The balanced-binary-tree oracle of insertion training, in target-index space.

A state is the sorted list of target indices already on the canvas. Its slots are the gaps
between consecutive kept indices (and before the first, after the last); the missing indices of a
slot form one contiguous range. One oracle step inserts, in every slot at once, the middle index
of its range (``(lo + hi) // 2``), so a range of m missing tokens is filled after
``ceil(log2(m + 1))`` steps; one more pass, in which every slot predicts "no insertion", ends.
"""

from __future__ import annotations

import math


def slot_ranges(kept: list[int], n: int) -> list[tuple[int, int]]:
    """The missing index range [lo, hi) of each slot of the canvas holding target indices ``kept`` (sorted) of n."""
    bounds = [-1, *kept, n]
    return [(bounds[k] + 1, bounds[k + 1]) for k in range(len(bounds) - 1)]


def middle(lo: int, hi: int) -> int | None:
    """The index the oracle inserts into a slot missing [lo, hi), or None when it is complete."""
    return (lo + hi - 1) // 2 if hi > lo else None


def oracle_step(kept: list[int], n: int) -> list[int]:
    """The kept indices after one parallel oracle step."""
    new = [m for m in (middle(lo, hi) for lo, hi in slot_ranges(kept, n)) if m is not None]
    return sorted(kept + new)


def oracle_states(kept: list[int], n: int) -> list[list[int]]:
    """Every state from ``kept`` to the full target (the last state is complete)."""
    states = [sorted(kept)]
    while len(states[-1]) < n:
        states.append(oracle_step(states[-1], n))
    return states


def passes_to_finish(n: int) -> int:
    """Forward passes of oracle decoding from an empty canvas: ceil(log2(n + 1)) insertion steps and one final pass."""
    return math.ceil(math.log2(n + 1)) + 1
