"""The benchmarks' timing helper interleaves the systems, checks outputs and reports the spread."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from timing import interleaved, spread  # noqa: E402


def test_interleaved_alternates_the_order_and_checks_every_output():
    calls = []
    systems = {"a": lambda: calls.append("a") or [1], "b": lambda: calls.append("b") or [1]}
    secs, identical = interleaved(systems, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating rounds
    assert identical and [len(v) for v in secs.values()] == [3, 3]
    outputs = iter([[1], [1], [2]])
    _, identical = interleaved({"a": lambda: [1], "b": lambda: next(outputs)}, repeats=2)
    assert not identical  # one timed call of b differed


def test_spread_reports_median_quartiles_and_range():
    s = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
