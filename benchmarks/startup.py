"""CLI start-up: wall time of ``genloom components --json`` (no torch import, every plugin loaded).

Runs the command ``--repeats`` times in fresh processes (one untimed warm-up first, so the file
cache is warm) and prints the median with the interquartile range and min-max. Run it on a quiet
machine.

    python benchmarks/startup.py [--repeats 11] [--command components --json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--command", nargs="+", default=["components", "--json"])
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "genloom", *args.command]
    subprocess.run(cmd, check=True, capture_output=True)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    vals = sorted(times)
    q = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 else [vals[0]] * 3
    row = {"command": " ".join(["genloom", *args.command]), "median_s": statistics.median(vals), "q1_s": q[0], "q3_s": q[2], "min_s": vals[0], "max_s": vals[-1], "n": len(vals)}
    print(f"{row['command']}: median {row['median_s']:.3f} s (IQR {row['q1_s']:.3f}-{row['q3_s']:.3f}, min-max {row['min_s']:.3f}-{row['max_s']:.3f}, {row['n']} runs)")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
