"""Measure mask-token self-speculative decoding against plain greedy decoding on the same tiny model.

    python tests/plugins/mtp/measure_mtp.py --data sentences --masks 1,2,3,4

Trains a tiny byte transformer (next-token), then the gated LoRA, mask embedding and sampler with
the base frozen, and prints a markdown table: forward passes, tokens per pass, mean accepted drafts
and the wall-clock ratio against greedy decoding (min over repeats), after checking the outputs are
identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import mtp_toy  # noqa: E402
from genloom.core.generation import run  # noqa: E402


def timed(model, prompts, decoder, new, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = run(model, prompts, decoder, max_new_tokens=new)
        best = min(best, time.perf_counter() - t)
    return out, best


def pass_cost(widths, args):
    """Milliseconds per forward pass of greedy and mtp decoding (untrained models: only the cost counts)."""
    masks = [int(s) for s in args.masks.split(",")]
    print("| d_model | greedy ms / pass | " + " | ".join(f"m={m} ms / pass (ratio)" for m in masks) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in masks) + " |")
    for d in widths:
        torch.manual_seed(0)
        built = mtp_toy.build(mtp_toy.model_config(d_model=d, n_layers=4, rank=args.rank, n_masks=max(masks)))
        model, prompts = built.model.eval(), [list(b"the quick ")] * args.batch
        out, t = timed(model, prompts, built.ctx.build("decoder", "greedy"), args.new, args.repeats)
        base = t / out.metrics.forward_passes["target"] * 1e3
        cells = []
        for m in masks:
            res, t = timed(model, prompts, built.ctx.build("decoder", {"name": "mtp", "n_masks": m}), args.new, args.repeats)
            ms = t / res.metrics.forward_passes["target"] * 1e3
            cells.append(f"{ms:.2f} ({ms / base:.2f}x)")
        print(f"| {d} | {base:.2f} | " + " | ".join(cells) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["periodic", "sentences"], default="sentences")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--mtp-steps", type=int, default=300)
    ap.add_argument("--masks", default="1,2,3,4")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pass-cost", default="", help="widths (e.g. 64,128,256,512): time one model call of each decoder on untrained 4-layer models instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pass_cost:
        return pass_cost([int(w) for w in args.pass_cost.split(",")], args)
    torch.manual_seed(0)
    masks = [int(s) for s in args.masks.split(",")]
    built = mtp_toy.build(mtp_toy.model_config(d_model=args.d_model, n_layers=args.layers, rank=args.rank, n_masks=max(masks), cuts_per_sequence=6))
    model = built.model
    data = mtp_toy.periodic() if args.data == "periodic" else mtp_toy.stream()
    t = time.perf_counter()
    base = mtp_toy.train_base(model, data, args.base_steps, lr=3e-3, seq_len=64)
    out = mtp_toy.train_mtp(model, data, args.mtp_steps, lr=3e-3, seq_len=64)
    print(f"trained in {time.perf_counter() - t:.0f} s: base loss {base:.3f}; sampler "
          + ", ".join(f"acc{i + 1} {out[f'acc_mask{i + 1}']:.2f}" for i in range(max(masks))), file=sys.stderr)
    model.eval()
    starts = [b"the quick ", b"pack my box w", b"how vexingly ", b"sphinx of bl"] if args.data == "sentences" else [b"abc", b"xyz", b"0123", b"mnop"]
    prompts = [list(starts[i % len(starts)]) for i in range(args.batch)]
    plain, t_plain = timed(model, prompts, built.ctx.build("decoder", "greedy"), args.new, args.repeats)
    print("| decoder | masks | forward passes | tokens / pass | mean accepted drafts | wall-clock vs greedy | identical |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| greedy | 0 | {plain.metrics.forward_passes['target']} | {plain.metrics.tokens_per_forward:.2f} | - | 1.00x ({t_plain * 1e3:.0f} ms) | - |")
    for m in masks:
        dec = built.ctx.build("decoder", {"name": "mtp", "n_masks": m})
        res, t_mtp = timed(model, prompts, dec, args.new, args.repeats)
        print(f"| mtp | {m} | {res.metrics.forward_passes['target']} | {res.metrics.tokens_per_forward:.2f} | {res.metrics.mean_acceptance_length:.2f} | "
              f"{t_plain / t_mtp:.2f}x ({t_mtp * 1e3:.0f} ms) | {res.ids == plain.ids} |")


if __name__ == "__main__":
    main()
