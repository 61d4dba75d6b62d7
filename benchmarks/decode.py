"""Greedy decoding throughput: genloom vs Hugging Face transformers on identical weights.

One run builds a random Llama in transformers, converts it with ``genloom import hf`` (so both
hold the same weights) and times greedy decoding of ``--new`` tokens at each batch size. The
measurement is made to be fair and repeatable:

- both systems run with the same number of intra-op threads (``--threads``, default 1), set once;
- each repeat times the two systems back to back, alternating which goes first, so a change in
  machine load hits both alike (interleaved, after one warm-up call each);
- every timed call's tokens are compared: the script reports whether all were identical;
- it prints the median tokens/s of each system with its spread (interquartile range and min-max
  over ``--repeats``), and the median of the per-repeat ratios. Ratios > 1 mean genloom is faster.

Wall-clock time around each whole ``generate`` call is what is timed (prefill included). Run it on a
quiet machine: a figure measured while other jobs share the cores says little.

    python benchmarks/decode.py [--new 256] [--batch 1 8] [--repeats 7] [--threads 1] [--device cpu|cuda] [--dtype float32|bfloat16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, pin_threads, spread  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per system and batch size (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for both systems")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pin_threads(args.threads)

    import transformers

    import genloom
    from genloom.core.hf import import_llama

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 32 * 32, num_hidden_layers=args.layers,
                                   num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, max_position_embeddings=4096)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(Path(tmp) / "hf")
        import_llama(Path(tmp) / "hf", Path(tmp) / "run")
        gen = genloom.load(Path(tmp) / "run")
    hf.to(args.device, dtype)
    gen.model.to(args.device, dtype)
    rows = []
    for B in args.batch:
        prompts = torch.randint(0, args.vocab, (B, args.prompt), generator=torch.Generator().manual_seed(B))
        ids = prompts.to(args.device)

        def run_hf():
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)
            return out[:, args.prompt:].tolist()

        def run_ours():
            return gen.generate(ids, max_new_tokens=args.new, decoder="greedy", eos_token_id=[]).ids

        secs, identical = interleaved({"transformers": run_hf, "genloom": run_ours}, args.repeats, sync=lambda: _sync(args.device))
        tok = B * args.new
        ratios = [h / g for h, g in zip(secs["transformers"], secs["genloom"])]
        row = {
            "batch": B,
            "new_tokens": args.new,
            "transformers_tok_s": spread([tok / s for s in secs["transformers"]]),
            "genloom_tok_s": spread([tok / s for s in secs["genloom"]]),
            "ratio_genloom_over_transformers": spread(ratios),
            "identical_tokens": identical,
        }
        rows.append(row)
        t, g, q = row["transformers_tok_s"], row["genloom_tok_s"], row["ratio_genloom_over_transformers"]
        print(f"batch {B:2d}: transformers {t['median']:8.1f} tok/s (IQR {t['q1']:.1f}-{t['q3']:.1f}) | genloom {g['median']:8.1f} tok/s "
              f"(IQR {g['q1']:.1f}-{g['q3']:.1f}) | ratio {q['median']:.2f}x (min-max {q['min']:.2f}-{q['max']:.2f}, {q['n']} interleaved repeats) | "
              f"identical tokens: {identical}")
    info = {"device": args.device, "dtype": args.dtype, "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "model": vars(args) | {"json": None}}
    print(json.dumps(info, default=str))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2, default=str))


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
