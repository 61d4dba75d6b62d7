"""Greedy decoding throughput: genloom vs Hugging Face transformers on identical weights.

One run builds a random Llama in transformers, copies its weights into a genloom model (the
renaming of ``genloom import hf``, in memory), then times greedy decoding of ``--new`` tokens at
each batch size for each variant:

- ``genloom-dynamic``: the growing KV cache, eager (``generate(cache="dynamic")``);
- ``genloom-static-compiled``: the preallocated cache and a ``torch.compile``d one-token step
  (``generate(cache="static", compile=True)``; mode ``reduce-overhead`` -- CUDA graphs -- on CUDA);
- ``hf-eager``: ``transformers``' ``generate`` with its dynamic cache;
- ``hf-static-compiled``: ``generate(cache_implementation="static")`` with its compiled forward.

Every variant's tokens are compared with ``genloom-dynamic``'s. Ratios > 1 mean genloom is faster.
On CUDA it also measures the device's copy bandwidth and reports batch-1 tokens/s as a fraction of
the bandwidth bound (bytes of weights read per step / measured bandwidth).

    python benchmarks/decode.py [--preset 1b] [--new 256] [--batch 1 8 32] [--device cuda] [--dtype bfloat16]
                                [--variants genloom-dynamic hf-eager ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = ("genloom-dynamic", "genloom-static-compiled", "hf-eager", "hf-static-compiled")

#: Llama shapes by name: hidden, layers, heads, key/value heads, intermediate size, vocabulary.
PRESETS = {
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=32000),  # 1.10e9 parameters
    "small": dict(hidden=512, layers=6, heads=8, kv_heads=4, intermediate=1365 // 32 * 32, vocab=4096),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=160, vocab=256),
}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model shape (the size flags below override it)")
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--new", type=int, default=256, help="tokens generated per sequence")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=32, help="prompt length")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per variant after the warm-up (the fastest counts)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def build(args):
    """A random transformers Llama and a genloom model holding the same weights, on the device."""
    import transformers

    from genloom.core import config as config_mod
    from genloom.core.generation import Generator
    from genloom.core.hf import llama_config, rename
    from genloom.core.model import assemble

    dtype = getattr(torch, args.dtype)
    cfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                                   num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(args.device):
        hf = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    with tempfile.TemporaryDirectory() as tmp:
        cfg.to_json_file(str(Path(tmp) / "config.json"))
        node = llama_config(Path(tmp))
    validated = config_mod.validate(config_mod.compose(None, None, base=node))
    with torch.device(args.device):
        built = assemble(validated, data=False)
    model = built.model.to(dtype).eval()
    state = {rename(k): v for k, v in hf.state_dict().items() if rename(k) is not None}
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(state[k])
    return hf, Generator(built)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device, mib: int) -> float:
    """Bytes per second of a device-to-device copy (read + write), the best of 10."""
    n = mib * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best


def weight_bytes_per_step(model) -> int:
    """Bytes of weights one decode step reads: every parameter except the embedding table (only
    one row per token is read) unless the output projection shares it."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    head = model.head
    embed = head.embed_tokens.weight
    tied = getattr(head, "tied", False)
    return total if tied else total - embed.numel() * embed.element_size()


def runner(name, args, hf, gen, prompts):
    """A function that decodes ``prompts`` with variant ``name`` -> (ids, seconds, ttft seconds or None)."""
    new = args.new

    if name.startswith("genloom"):
        static = name == "genloom-static-compiled"

        def run_genloom():
            sync(args.device)
            t0 = time.perf_counter()  # timed from outside, as transformers' generate is
            res = gen.generate(prompts.tolist(), max_new_tokens=new, decoder="greedy", cache="static" if static else "dynamic", compile=static)
            sync(args.device)
            return res.ids, time.perf_counter() - t0, res.metrics.first_token_seconds

        return run_genloom

    import transformers

    ids = prompts.to(args.device)
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None)
    if name == "hf-static-compiled":
        compile_config = transformers.CompileConfig(fullgraph=True, mode="reduce-overhead" if torch.device(args.device).type == "cuda" else "default")
        compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told
        kw.update(cache_implementation="static", compile_config=compile_config)
    else:
        kw.update(disable_compile=True)

    def run_hf():
        ttft = None
        if name == "hf-eager":
            t0 = time.perf_counter()
            with torch.no_grad():
                hf.generate(ids, max_new_tokens=1, **kw)
            sync(args.device)
            ttft = time.perf_counter() - t0
        sync(args.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        sync(args.device)
        return out[:, ids.shape[1]:].tolist(), time.perf_counter() - t0, ttft

    return run_hf


def agreement(ids, reference) -> dict:
    """Whether two runs produced the same tokens, and where the first difference is on average."""
    firsts = []
    for a, b in zip(ids, reference):
        diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        firsts.append(len(b) if diff is None and len(a) == len(b) else diff if diff is not None else min(len(a), len(b)))
    return {"identical_tokens": ids == reference, "mean_first_difference": sum(firsts) / max(len(firsts), 1)}


def main(argv=None):
    args = parse(argv)
    import transformers

    hf, gen = build(args)
    n_params = sum(p.numel() for p in gen.model.parameters())
    info = {"device": args.device, "device_name": torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
            "dtype": args.dtype, "torch": torch.__version__, "transformers": transformers.__version__, "parameters": n_params,
            "model": {k: getattr(args, k) for k in ("preset", "hidden", "layers", "heads", "kv_heads", "intermediate", "vocab")},
            "new_tokens": args.new, "prompt": args.prompt, "repeats": args.repeats}
    print(json.dumps(info), flush=True)
    rows = []
    out = {"info": info, "rows": rows}
    if torch.device(args.device).type == "cuda" or args.json:
        bandwidth = copy_bandwidth(args.device, 1024 if torch.device(args.device).type == "cuda" else 64)
        weight_bytes = weight_bytes_per_step(gen.model)
        out["bandwidth_bound"] = {"copy_bandwidth_GBps": bandwidth / 1e9, "weight_bytes_per_step": weight_bytes, "batch1_bound_tok_s": bandwidth / weight_bytes}
        print(json.dumps(out["bandwidth_bound"]), flush=True)
    for B in args.batch:
        prompts = torch.randint(0, args.vocab, (B, args.prompt), generator=torch.Generator().manual_seed(B))
        results, reference = {}, None
        for name in args.variants:
            fn = runner(name, args, hf, gen, prompts)
            t0 = time.perf_counter()
            try:
                first = fn()  # warm-up: compilation, CUDA graph capture, allocator
            except Exception as exc:  # a failing variant is reported, the others still run
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                print(f"batch {B:2d}: {name} failed: {results[name]['error'][:300]}", flush=True)
                continue
            warmup = time.perf_counter() - t0
            ids, secs, ttft = min((fn() for _ in range(args.repeats)), key=lambda r: r[1]) if args.repeats else first
            if name == "genloom-dynamic":
                reference = ids
            results[name] = {"tok_s": B * args.new / secs, "seconds": secs, "warmup_seconds": warmup, "ttft_ms": None if ttft is None else 1000 * ttft, "ids": ids}
            print(f"batch {B:2d}: {name:24s} {results[name]['tok_s']:10.1f} tok/s  (warm-up {warmup:.1f}s)", flush=True)
        for name, r in results.items():
            ids = r.pop("ids", None)
            if reference is not None and ids is not None:
                r.update(agreement(ids, reference))
        row = {"batch": B, "variants": results}
        base = results.get("genloom-dynamic", {}).get("tok_s")
        hf_eager = results.get("hf-eager", {}).get("tok_s")
        for name, r in results.items():
            if "tok_s" in r and hf_eager:
                r["ratio_over_hf_eager"] = r["tok_s"] / hf_eager
            if "tok_s" in r and base:
                r["ratio_over_genloom_dynamic"] = r["tok_s"] / base
        rows.append(row)
        print(json.dumps({"batch": B, **{n: {k: v for k, v in r.items() if k != "error"} for n, r in results.items()}}), flush=True)
        if B == 1 and "bandwidth_bound" in out:
            bound = out["bandwidth_bound"]["batch1_bound_tok_s"]
            out["bandwidth_bound"]["batch1_fraction"] = {n: r["tok_s"] / bound for n, r in results.items() if "tok_s" in r}
            print(json.dumps(out["bandwidth_bound"]), flush=True)
        if args.json:  # after every batch size, so a run cut short still leaves its rows
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2, default=str))
    failed = [n for r in rows for n, v in r["variants"].items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
