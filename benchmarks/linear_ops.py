"""Time the fft_conv and linear_recurrence backends as the sequence grows; print ratios to the reference.

    python benchmarks/linear_ops.py                       # CPU, L = 256, 1024, 4096 (short)
    python benchmarks/linear_ops.py --lengths 256,1024,4096,16384 --skip-quadratic-above 4096
    python benchmarks/linear_ops.py --device cuda         # adds the triton backend where usable

The O(L^2) forms (fft_conv reference, linear_recurrence parallel) are skipped above
``--skip-quadratic-above`` so a long sweep stays short. Median of ``--repeats`` runs, forward only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genloom.kernels import fft_conv, linear_recurrence  # noqa: E402


def timed(fn, repeats: int, device: str) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--channels", type=int, default=64, help="fft_conv channels D")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32, help="linear_recurrence K = V")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-quadratic-above", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = args.device
    lengths = [int(x) for x in args.lengths.split(",")]

    print("fft_conv (B=1, D=%d, K=L), forward" % args.channels)
    forms = {"reference": fft_conv.fft_conv_reference, "chunked": fft_conv.fft_conv_chunked, "fft": fft_conv.fft_conv_fft}
    for L in lengths:
        u = torch.randn(1, L, args.channels, device=device)
        k = torch.randn(args.channels, L, device=device)
        row = {}
        for name, fn in forms.items():
            if name == "reference" and L > args.skip_quadratic_above:
                continue
            row[name] = timed(lambda fn=fn: fn(u, k), args.repeats, device)
        ref = row.get("reference")
        print(f"  L={L:6d} " + "  ".join(f"{n} {t * 1e3:9.1f} ms" + (f" (x{ref / t:.1f})" if ref and n != "reference" else "") for n, t in row.items()))

    print("linear_recurrence (B=1, H=%d, K=V=%d, scalar decay), forward" % (args.heads, args.head_dim))
    backends = {"reference": linear_recurrence.make_reference(), "parallel": linear_recurrence.make_parallel(), "chunkwise": linear_recurrence.make_chunkwise()}
    triton_backend = linear_recurrence.make_triton()
    if triton_backend.supports(torch.device(device), torch.float32) is None:
        backends["triton"] = triton_backend
    for L in lengths:
        H, K = args.heads, args.head_dim
        q, kk, v = (torch.randn(1, H, L, K, device=device) for _ in range(3))
        g = -torch.rand(1, H, L, device=device) * 0.1
        row = {}
        for name, fn in backends.items():
            if name == "parallel" and L > args.skip_quadratic_above:
                continue
            row[name] = timed(lambda fn=fn: fn(q, kk / K ** 0.5, v, g), args.repeats, device)
        ref = row.get("reference")
        print(f"  L={L:6d} " + "  ".join(f"{n} {t * 1e3:9.1f} ms" + (f" (x{ref / t:.1f})" if ref and n != "reference" else "") for n, t in row.items()))


if __name__ == "__main__":
    main()
