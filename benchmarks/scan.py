"""Time the selective_scan backends side by side and print ratios against the reference.

    python benchmarks/scan.py                 # CPU: reference vs chunked (triton if usable)
    python benchmarks/scan.py --backward      # forward + backward
    python benchmarks/scan.py --shapes 2,1024,512,16 --chunk-sizes 16,32,64
    TRITON_INTERPRET=1 python benchmarks/scan.py   # triton's interpreter on CPU (slow; a check, not a speed)

On CUDA it also reports the achieved memory bandwidth against the bytes the scan must move at
least: read u, delta, z, B, C, A, D, delta_bias and write y and the final state, once each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genloom.kernels.selective_scan import ChunkedBackend, make_reference, make_triton  # noqa: E402

DEFAULT_SHAPES = [(1, 256, 128, 16), (2, 512, 256, 16), (4, 1024, 256, 16), (1, 2048, 512, 16)]


def make_inputs(batch, length, channels, state_size, device, dtype, requires_grad=False):
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, scale=1.0):
        t = (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    A = (-torch.arange(1, state_size + 1, dtype=torch.float32).repeat(channels, 1)).to(device).requires_grad_(requires_grad)
    return dict(
        u=randn(batch, length, channels), delta=randn(batch, length, channels, scale=0.5), A=A,
        B=randn(batch, length, state_size), C=randn(batch, length, state_size), D=randn(channels),
        z=randn(batch, length, channels), delta_bias=randn(channels, scale=0.5),
    )


def min_bytes(batch, length, channels, state_size, dtype) -> int:
    item = torch.tensor([], dtype=dtype).element_size()
    per_token = (3 * channels + 2 * state_size) * item + channels * item  # u, delta, z, B, C in; y out
    return batch * length * per_token + channels * state_size * 4 + 2 * channels * item + batch * channels * state_size * 4


def timeit(fn, device, repeats, budget_s=20.0):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up (compilation, allocator)
    sync()
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shapes", nargs="*", help="B,L,D,N ...")
    parser.add_argument("--chunk-sizes", default="auto", help="comma list of chunked-backend chunk sizes ('auto': ceil(sqrt(L)))")
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-reference-above", type=int, default=1 << 30, help="skip the reference when B*L*D exceeds this")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the timings (and GB/s on CUDA) here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else DEFAULT_SHAPES

    backends = {"reference": make_reference()}
    for size in args.chunk_sizes.split(","):
        backends[f"chunked/{size}"] = ChunkedBackend(None if size in ("auto", "0") else int(size))
    triton_backend = make_triton()
    reason = triton_backend.supports(device, dtype)
    if reason is None:
        backends["triton"] = triton_backend
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}) "
          f"dtype={args.dtype} mode={'forward+backward' if args.backward else 'forward'} torch={torch.__version__}")
    if reason:
        print(f"triton skipped: {reason}")
    header = f"{'B,L,D,N':>18} | " + " | ".join(f"{name:>22}" for name in backends)
    print(header)
    print("-" * len(header))
    records = []
    for shape in shapes:
        inputs = make_inputs(*shape, device, dtype, requires_grad=args.backward)
        cells, base = [], None
        for name, backend in backends.items():
            if name == "reference" and shape[0] * shape[1] * shape[2] > args.skip_reference_above:
                cells.append(f"{'skipped':>22}")
                continue

            def run(backend=backend):
                y, state = backend(**inputs, delta_softplus=True)
                if args.backward:
                    (y.float().sum() + state.sum()).backward()

            seconds = timeit(run, device, args.repeats)
            base = seconds if name == "reference" else base
            ratio = f"x{base / seconds:.1f}" if base else ""
            extra = ""
            record = {"shape": list(shape), "backend": name, "seconds": seconds, "speedup_over_reference": base / seconds if base else None}
            if device.type == "cuda" and not args.backward:
                record["GBps"] = min_bytes(*shape, dtype) / seconds / 1e9
                extra = f" {record['GBps']:.0f}GB/s"
            records.append(record)
            cells.append(f"{seconds * 1e3:9.2f}ms {ratio:>6}{extra}".rjust(22))
        print(f"{','.join(map(str, shape)):>18} | " + " | ".join(cells))
    if device.type == "cuda" and not args.backward:
        print("GB/s = minimum bytes the scan must read and write / time (compare with the GPU's peak HBM bandwidth)")
    if args.json:
        info = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": args.dtype,
                "mode": "forward+backward" if args.backward else "forward", "torch": torch.__version__, "triton_skipped": reason}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "rows": records}, indent=2))


if __name__ == "__main__":
    main()
