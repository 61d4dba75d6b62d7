"""The honest way to time two (or more) systems against each other, shared by the benchmarks.

- :func:`pin_threads`: the same intra-op thread count for every system, set once;
- :func:`interleaved`: one untimed warm-up call per system, then ``repeats`` rounds in which every
  system runs once, back to back, the order alternating between rounds (so a change in machine
  load hits all alike); the outputs of every call are compared with the first system's;
- :func:`spread`: median, interquartile range and min-max of a list of measurements.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def pin_threads(n: int) -> int:
    import torch

    torch.set_num_threads(n)
    return torch.get_num_threads()


def spread(values: list[float]) -> dict:
    """Median, interquartile range (q1, q3) and min-max of a list of measurements."""
    vals = sorted(values)
    q = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 else [vals[0]] * 3
    return {"median": statistics.median(vals), "q1": q[0], "q3": q[2], "min": vals[0], "max": vals[-1], "n": len(vals)}


def interleaved(systems: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None) -> tuple[dict[str, list[float]], bool]:
    """Seconds per call of each system over ``repeats`` interleaved rounds, and whether every
    call's output equalled the first system's warm-up output."""
    names = list(systems)
    reference, identical = None, True
    for name in names:  # warm-up (and the reference output)
        out = systems[name]()
        reference = out if reference is None else reference
        identical &= out == reference
    secs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync()
            t0 = time.perf_counter()
            out = systems[name]()
            sync()
            secs[name].append(time.perf_counter() - t0)
            identical &= out == reference
    return secs, identical
