"""Greedy decoding throughput: genloom vs Hugging Face transformers on identical weights.

One run builds a random Llama in transformers, converts it with ``genloom import hf`` (so both
hold the same weights), checks that both produce the same greedy tokens, then times greedy
decoding of ``--new`` tokens at each batch size and prints tokens/s of each, their ratio and the
time to first token. Ratios > 1 mean genloom is faster.

    python benchmarks/decode.py [--new 256] [--batch 1 8] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser()
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
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import transformers

    import genloom
    from genloom.core.hf import import_llama

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 32 * 32, num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, max_position_embeddings=4096)
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

        def run_hf():
            ids = prompts.to(args.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                first = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=0, eos_token_id=None)
            _sync(args.device)
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)
            _sync(args.device)
            return out[:, args.prompt:].tolist(), time.perf_counter() - t0, ttft

        def run_ours():
            res = gen.generate(prompts.tolist(), max_new_tokens=args.new, decoder="greedy")
            _sync(args.device)
            return res.ids, res.metrics.seconds, res.metrics.first_token_seconds

        best = {}
        for name, fn in (("transformers", run_hf), ("genloom", run_ours)):
            fn()  # warm-up
            times = [fn() for _ in range(args.repeats)]
            ids, secs, ttft = min(times, key=lambda t: t[1])
            best[name] = (ids, secs, ttft)
        same = best["transformers"][0] == best["genloom"][0]
        tok = B * args.new
        row = {
            "batch": B,
            "new_tokens": args.new,
            "transformers_tok_s": tok / best["transformers"][1],
            "genloom_tok_s": tok / best["genloom"][1],
            "ratio_genloom_over_transformers": best["transformers"][1] / best["genloom"][1],
            "transformers_ttft_ms": 1000 * best["transformers"][2],
            "genloom_ttft_ms": 1000 * best["genloom"][2],
            "identical_tokens": same,
        }
        rows.append(row)
        print(f"batch {B:2d}: transformers {row['transformers_tok_s']:8.1f} tok/s | genloom {row['genloom_tok_s']:8.1f} tok/s | "
              f"ratio {row['ratio_genloom_over_transformers']:.2f}x | TTFT {row['transformers_ttft_ms']:.1f} ms vs {row['genloom_ttft_ms']:.1f} ms | identical tokens: {same}")
    info = {"device": args.device, "dtype": args.dtype, "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(), "model": vars(args) | {"json": None}}
    print(json.dumps(info, default=str))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2, default=str))


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
