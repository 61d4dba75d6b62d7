"""Time the fft_conv and linear_recurrence backends as the sequence grows; print ratios to the reference.

    python benchmarks/linear_ops.py                       # CPU, L = 256, 1024, 4096 (short)
    python benchmarks/linear_ops.py --lengths 256,1024,4096,16384 --skip-quadratic-above 4096
    python benchmarks/linear_ops.py --device cuda         # adds the triton backend where usable

The O(L^2) forms (fft_conv reference, linear_recurrence parallel) are skipped above
``--skip-quadratic-above`` so a long sweep stays short. Forward only; threads pinned; the backends of
one shape run interleaved (one warm-up each, then each once per round, the order alternating), and
each cell is the median of ``--repeats`` rounds with its interquartile range. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, pin_threads, spread  # noqa: E402

from genloom.kernels import fft_conv, linear_recurrence  # noqa: E402


def row_of(systems: dict, repeats: int, device: str) -> dict:
    """Interleaved timing (timing.interleaved: one warm-up each, then every backend once per round,
    the order alternating) of the backends of one shape; milliseconds as median / quartiles."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    secs, _ = interleaved({name: (lambda fn=fn: (fn(), None)[1]) for name, fn in systems.items()}, repeats, sync)
    return {name: spread([1e3 * t for t in ts]) for name, ts in secs.items()}


def print_table(title: str, rows: dict[int, dict], names: list[str]) -> None:
    print(f"\n{title}\n")
    print("| L | " + " | ".join(f"{n} ms (IQR)" for n in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for L, row in rows.items():
        cells = [f"{row[n]['median']:.1f} ({row[n]['q1']:.1f}-{row[n]['q3']:.1f})" if n in row else "skipped" for n in names]
        print(f"| {L} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--channels", type=int, default=64, help="fft_conv channels D")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32, help="linear_recurrence K = V")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-quadratic-above", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    device = args.device
    lengths = [int(x) for x in args.lengths.split(",")]

    forms = {"reference": fft_conv.fft_conv_reference, "chunked": fft_conv.fft_conv_chunked, "fft": fft_conv.fft_conv_fft}
    rows = {}
    for L in lengths:
        u = torch.randn(1, L, args.channels, device=device)
        k = torch.randn(args.channels, L, device=device)
        systems = {n: (lambda fn=fn: fn(u, k)) for n, fn in forms.items() if not (n == "reference" and L > args.skip_quadratic_above)}
        rows[L] = row_of(systems, args.repeats, device)
    print_table(f"fft_conv (B=1, D={args.channels}, K=L), forward, float32, {args.threads} thread(s), {args.repeats} interleaved repeats", rows, list(forms))

    backends = {"reference": linear_recurrence.make_reference(), "parallel": linear_recurrence.make_parallel(), "chunkwise": linear_recurrence.make_chunkwise()}
    triton_backend = linear_recurrence.make_triton()
    if triton_backend.supports(torch.device(device), torch.float32) is None:
        backends["triton"] = triton_backend
    rows = {}
    for L in lengths:
        H, K = args.heads, args.head_dim
        q, kk, v = (torch.randn(1, H, L, K, device=device) for _ in range(3))
        g = -torch.rand(1, H, L, device=device) * 0.1
        systems = {n: (lambda fn=fn: fn(q, kk / K ** 0.5, v, g)) for n, fn in backends.items() if not (n == "parallel" and L > args.skip_quadratic_above)}
        rows[L] = row_of(systems, args.repeats, device)
    print_table(f"linear_recurrence (B=1, H={args.heads}, K=V={args.head_dim}, scalar decay), forward, float32", rows, list(backends))

if __name__ == "__main__":
    main()
