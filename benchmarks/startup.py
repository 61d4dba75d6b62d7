"""CLI start-up: wall time of ``genloom components --json`` (no torch import, every plugin loaded).

Runs the command ``--repeats`` times in fresh processes (one untimed warm-up first, so the file
cache is warm) and prints the median with the interquartile range and min-max. Run it on a quiet
machine.

    python benchmarks/startup.py [--repeats 11] [--command components --json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import spread  # noqa: E402


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
    st = spread(times)
    row = {"command": " ".join(["genloom", *args.command]), "median_s": st["median"], "q1_s": st["q1"], "q3_s": st["q3"], "min_s": st["min"], "max_s": st["max"], "n": st["n"]}
    print(f"{row['command']}: median {row['median_s']:.3f} s (IQR {row['q1_s']:.3f}-{row['q3_s']:.3f}, min-max {row['min_s']:.3f}-{row['max_s']:.3f}, {row['n']} runs)")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
