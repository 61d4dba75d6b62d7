"""Measure blockwise parallel decoding against plain greedy decoding on the same tiny model.

    python tests/plugins/blockwise_parallel/measure_bpd.py --data sentences --block-sizes 2,4,6

Trains a tiny byte transformer (next-token), then the proposal heads with the base frozen, and
prints a markdown table: model calls, tokens per call, mean accepted block size and the wall-clock
ratio against greedy decoding (min over repeats), after checking the outputs are identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bpd_toy  # noqa: E402
from genloom.core.generation import run  # noqa: E402


def timed(model, prompts, decoder, new, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = run(model, prompts, decoder, max_new_tokens=new)
        best = min(best, time.perf_counter() - t)
    return out, best


def pass_cost(widths, args):
    """Milliseconds per model call of greedy and blockwise decoding (untrained models: only the cost counts)."""
    sizes = [int(s) for s in args.block_sizes.split(",")]
    print("| d_model | greedy ms / call | " + " | ".join(f"k={k} ms / call (ratio)" for k in sizes) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in sizes) + " |")
    for d in widths:
        torch.manual_seed(0)
        built = bpd_toy.build(bpd_toy.model_config(d_model=d, n_layers=4, block_size=max(sizes)))
        model, prompts = built.model.eval(), [list(b"the quick ")] * args.batch
        out, t = timed(model, prompts, built.ctx.build("decoder", "greedy"), args.new, args.repeats)
        base = t / out.metrics.forward_passes["target"] * 1e3
        cells = []
        for k in sizes:
            res, t = timed(model, prompts, built.ctx.build("decoder", {"name": "blockwise-parallel", "block_size": k}), args.new, args.repeats)
            ms = t / res.metrics.forward_passes["target"] * 1e3
            cells.append(f"{ms:.2f} ({ms / base:.2f}x)")
        print(f"| {d} | {base:.2f} | " + " | ".join(cells) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["periodic", "sentences"], default="sentences")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--head-steps", type=int, default=300)
    ap.add_argument("--block-sizes", default="2,4,6")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pass-cost", default="", help="widths (e.g. 64,128,256,512): time one model call of each decoder on untrained 4-layer models instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pass_cost:
        return pass_cost([int(w) for w in args.pass_cost.split(",")], args)
    torch.manual_seed(0)
    sizes = [int(s) for s in args.block_sizes.split(",")]
    built = bpd_toy.build(bpd_toy.model_config(d_model=args.d_model, n_layers=args.layers, block_size=max(sizes)))
    model = built.model.to(args.device)
    data = (bpd_toy.periodic() if args.data == "periodic" else bpd_toy.sentences()).to(args.device)
    t = time.perf_counter()
    base = bpd_toy.train(model, data, args.base_steps, bpd_toy.next_token_loss, seq_len=64, lr=3e-3)
    heads = bpd_toy.train(model, data, args.head_steps, lambda m, b: m.loss(b), seq_len=64, lr=3e-3, seed=1)
    print(f"trained in {time.perf_counter() - t:.0f} s: base loss {base['loss']:.3f}; heads "
          + ", ".join(f"acc{i + 1} {heads[f'acc_head{i + 1}']:.2f}" for i in range(max(sizes))), file=sys.stderr)
    model.eval()
    starts = [b"the quick ", b"pack my box w", b"how vexingly ", b"sphinx of bl"] if args.data == "sentences" else [b"abc", b"xyz", b"0123", b"mnop"]
    prompts = [list(starts[i % len(starts)]) for i in range(args.batch)]
    plain, t_plain = timed(model, prompts, built.ctx.build("decoder", "greedy"), args.new, args.repeats)
    print(f"| decoder | k | model calls | tokens / call | mean accepted block | wall-clock vs greedy | identical |")
    print(f"| --- | --- | --- | --- | --- | --- | --- |")
    calls = plain.metrics.forward_passes["target"]
    print(f"| greedy | 1 | {calls} | {plain.metrics.tokens_per_forward:.2f} | 1.00 | 1.00x ({t_plain * 1e3:.0f} ms) | - |")
    for k in sizes:
        dec = built.ctx.build("decoder", {"name": "blockwise-parallel", "block_size": k})
        out, t_block = timed(model, prompts, dec, args.new, args.repeats)
        calls = out.metrics.forward_passes["target"]
        print(f"| blockwise-parallel | {k} | {calls} | {out.metrics.tokens_per_forward:.2f} | {out.metrics.mean_acceptance_length:.2f} | "
              f"{t_plain / t_block:.2f}x ({t_block * 1e3:.0f} ms) | {out.ids == plain.ids} |")


if __name__ == "__main__":
    main()
