"""Hybrid decoding vs greedy decoding of the full decoder on the embedded reverse task.

Decodes ``--n`` random letter strings (3-12 letters, seeded) with the full decoder's ``greedy`` and
with ``hybrid-decoding`` (fast decoder = ``FAST``), one source at a time, and prints load-independent
counts: agreement with greedy (must be 100%), full-decoder passes per sequence (prefill included)
and per generated token, verification rounds and corrections per sequence, fast-decoder passes per
token, and the acceptance of the first draft. Wall-clock seconds are printed but depend on the load.

    python benchmarks/hybrid_decoding.py runs/hybrid-decoding runs/hybrid-decoding-fast [--n 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import string
import time


def main(argv=None) -> int:
    import genloom

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("full")
    ap.add_argument("fast")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    gen = genloom.load(args.full, [f"decoder.draft={args.fast}"])
    rng = random.Random(args.seed)
    sources = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 12))) for _ in range(args.n)]
    hybrid = gen.decoder({"name": "hybrid-decoding", "draft": args.fast})
    totals = {"same": 0, "tokens": 0, "greedy_passes": 0, "hybrid_passes": 0, "fast_passes": 0, "rounds": 0, "corrections": 0, "first_draft_all": 0,
              "greedy_s": 0.0, "hybrid_s": 0.0, "correct": 0}
    for s in sources:
        src = list(gen.encode(s))
        t0 = time.perf_counter()
        g = gen.generate(source=[src], decoder="greedy")
        t1 = time.perf_counter()
        h = gen.generate(source=[src], decoder=hybrid)
        t2 = time.perf_counter()
        totals["greedy_s"] += t1 - t0
        totals["hybrid_s"] += t2 - t1
        totals["same"] += g.ids == h.ids
        totals["correct"] += g.decode()[0].rstrip("\n").split("\n")[0] == s[::-1] if isinstance(g.decode()[0], str) else 0
        totals["tokens"] += len(h.ids[0])
        totals["greedy_passes"] += g.metrics.forward_passes["target"]
        totals["hybrid_passes"] += h.metrics.forward_passes["target"]
        totals["fast_passes"] += h.metrics.forward_passes.get("draft", 0)
        totals["rounds"] += h.metrics.extra["rounds"]
        totals["corrections"] += h.metrics.extra["corrections"]
        totals["first_draft_all"] += h.metrics.extra["corrections"] == 0
    n, tok = args.n, totals["tokens"]
    print(f"{n} sources, {tok} target tokens (end-of-sequence included)")
    print("| decoder | same as greedy | full-decoder passes / sequence | full-decoder passes / token | rounds / sequence | corrections / sequence | fast-decoder passes / token | sequences with no correction | seconds (load-dependent) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| greedy | - | {totals['greedy_passes'] / n:.2f} | {totals['greedy_passes'] / tok:.3f} | - | - | - | - | {totals['greedy_s']:.2f} |")
    print(f"| hybrid-decoding | {totals['same']}/{n} | {totals['hybrid_passes'] / n:.2f} | {totals['hybrid_passes'] / tok:.3f} | {totals['rounds'] / n:.2f} | "
          f"{totals['corrections'] / n:.2f} | {totals['fast_passes'] / tok:.2f} | {totals['first_draft_all']}/{n} | {totals['hybrid_s']:.2f} |")
    print(f"greedy reverses {totals['correct']}/{n} sources exactly")
    return 0 if totals["same"] == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
