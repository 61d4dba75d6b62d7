"""Greedy decoding throughput: genloom vs Hugging Face transformers on identical weights.

One run builds a random Llama in transformers, copies its weights into a genloom model (the
renaming of ``genloom import hf``, in memory), then times greedy decoding of ``--new`` tokens at
each batch size for each variant:

- ``genloom-dynamic``: the growing KV cache, eager (``generate(cache="dynamic")``);
- ``genloom-static-compiled``: the preallocated cache and a ``torch.compile``d one-token step
  (``generate(cache="static", compile=True)``; mode ``reduce-overhead`` -- CUDA graphs -- on CUDA);
- ``hf-eager``: ``transformers``' ``generate`` with its dynamic cache;
- ``hf-static-compiled``: ``generate(cache_implementation="static")`` with its compiled forward.

The measurement is made to be fair and repeatable (:mod:`timing`): every variant runs with the
same number of intra-op threads (``--threads``); after one untimed warm-up call each (compilation,
CUDA graph capture), each repeat runs every variant back to back, alternating the order; wall-clock
time around each whole ``generate`` call is timed (prefill included), and the median tokens/s is
reported with its spread. Every variant's tokens are compared with ``genloom-dynamic``'s. Ratios > 1
mean the variant is faster. On CUDA (and whenever ``--json`` is given) it also measures the
device's copy bandwidth and reports batch-1 tokens/s as a fraction of the bandwidth bound (bytes of
weights read per step / measured bandwidth). Run it on a quiet machine.

    python benchmarks/decode.py [--preset 1b] [--new 256] [--batch 1 8 32] [--device cuda] [--dtype bfloat16]
                                [--variants genloom-dynamic hf-eager ...] [--repeats 7] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, pin_threads, spread  # noqa: E402

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
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per variant and batch size (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for every variant")
    ap.add_argument("--json", type=Path, help="write the results here (after every batch size)")
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
    """A function that decodes ``prompts`` greedily with variant ``name`` and returns the new ids."""
    new = args.new
    if name.startswith("genloom"):
        static = name == "genloom-static-compiled"
        # eos_token_id=[]: no end-of-sequence stop, as transformers is run with eos_token_id=None
        return lambda: gen.generate(prompts.tolist(), max_new_tokens=new, decoder="greedy", eos_token_id=[], cache="static" if static else "dynamic", compile=static).ids

    import transformers

    ids = prompts.to(args.device)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, eos_token_id=None, max_new_tokens=new, min_new_tokens=new)
    if name == "hf-static-compiled":
        compile_config = transformers.CompileConfig(fullgraph=True, mode="reduce-overhead" if torch.device(args.device).type == "cuda" else "default")
        compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told
        kw.update(cache_implementation="static", compile_config=compile_config)
    else:
        kw.update(disable_compile=True)

    def run_hf():
        with torch.no_grad():
            out = hf.generate(ids, **kw)
        return out[:, ids.shape[1]:].tolist()

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
    pin_threads(args.threads)
    import transformers

    hf, gen = build(args)
    n_params = sum(p.numel() for p in gen.model.parameters())
    info = {"device": args.device, "device_name": torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
            "dtype": args.dtype, "torch": torch.__version__, "transformers": transformers.__version__, "parameters": n_params,
            "model": {k: getattr(args, k) for k in ("preset", "hidden", "layers", "heads", "kv_heads", "intermediate", "vocab")},
            "new_tokens": args.new, "prompt": args.prompt, "repeats": args.repeats, "threads": torch.get_num_threads()}
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
        outputs, warmups, results = {}, {}, {}

        skip_next = set()

        def observed(name, fn):
            def call():
                if name in skip_next:  # interleaved()'s own warm-up: already done below
                    skip_next.discard(name)
                    return None
                t0 = time.perf_counter()
                outputs[name] = fn()
                warmups.setdefault(name, time.perf_counter() - t0)  # the first call: compilation, capture
                return None  # agreement is checked per variant below, not by interleaved()
            return call

        systems = {}
        for name in args.variants:
            fn = observed(name, runner(name, args, hf, gen, prompts))
            try:
                fn()  # a variant that fails is reported, the others still run
            except Exception as exc:
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                print(f"batch {B:2d}: {name} failed: {results[name]['error'][:300]}", flush=True)
                continue
            systems[name] = fn
            skip_next.add(name)
        first = dict(outputs)
        secs, _ = interleaved(systems, args.repeats, sync=lambda: sync(args.device)) if systems else ({}, True)
        reference = first.get("genloom-dynamic")
        for name in systems:
            tok_s = [B * args.new / t for t in secs[name]]
            r = results[name] = {"tok_s": spread(tok_s), "warmup_seconds": warmups[name]}
            if reference is not None:
                r.update(agreement(first[name], reference))
                r["identical_tokens"] &= outputs[name] == first[name]  # the timed calls gave the same tokens too
            for base in ("hf-eager", "genloom-dynamic"):
                if base in secs and base != name:
                    r[f"ratio_over_{base.replace('-', '_')}"] = spread([b / t for b, t in zip(secs[base], secs[name])])
            q = r["tok_s"]
            print(f"batch {B:2d}: {name:24s} {q['median']:10.1f} tok/s (IQR {q['q1']:.1f}-{q['q3']:.1f}, {q['n']} repeats; warm-up {warmups[name]:.1f}s) "
                  f"identical tokens: {r.get('identical_tokens')}", flush=True)
        rows.append({"batch": B, "new_tokens": args.new, "variants": results})
        if B == 1 and "bandwidth_bound" in out:
            bound = out["bandwidth_bound"]["batch1_bound_tok_s"]
            out["bandwidth_bound"]["batch1_fraction"] = {n: r["tok_s"]["median"] / bound for n, r in results.items() if "tok_s" in r}
            print(json.dumps(out["bandwidth_bound"]), flush=True)
        if args.json:  # after every batch size, so a run cut short still leaves its rows
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2, default=str))
    failed = [n for r in rows for n, v in r["variants"].items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
