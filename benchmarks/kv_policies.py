"""KV-cache policies and cross-layer sharing on long-context greedy decoding.

    python benchmarks/kv_policies.py --run runs/kv-bench            # a trained run (see below)
    python benchmarks/kv_policies.py --run runs/kv-bench --prompts 2 --new-tokens 32
    python benchmarks/kv_policies.py --run runs/kv-bench --policies window,heavy-hitter:sinks=4+recent_fraction=0.25

The run is a briefly trained quickstart model, so that agreement means something::

    genloom train configs/quickstart.yaml data.seq_len=256 trainer.max_steps=400 \\
        trainer.max_time_minutes=4 logger=none run_dir=runs/kv-bench

For each prompt (``--prompt-tokens`` BPE tokens of a Python standard-library file the model did not
see whole), the full cache decodes ``--new-tokens`` greedily: the reference. Every registered cache
policy with a ``budget`` field then runs at 100/50/25% of the context (prompt + new tokens), the
prompt fed in chunks of ``--chunk`` tokens (so a budget bounds the memory during the prefill too),
then **teacher-forced** along the reference continuation: agreement is the fraction of steps whose
greedy token equals the reference's (a free-running comparison would stop meaning anything after
the first difference). KV bytes come from the cache's own accounting (``cache.layer_nbytes()``),
the peak over every advance ("decoding": over the decode steps only, which is what a larger
``--chunk`` changes: ``--chunk 2048`` prefills the whole prompt with every entry, as SnapKV does,
and compresses after), and "of full" divides it by the peak of a cache
holding every entry in the model's dtype (a policy's ``storage`` field holds them narrower); "entries read" is the mean number of entries a
layer's attention read per decode step (``cache.stats``) over the final context length, which is
what a retrieval policy saves. ``--oracle`` adds, per budget, an eviction that knows which entries
the full cache's decode steps will attend to (an upper bound for score-based eviction). Cross-layer sharing schemes (CLA2, MLKV) are
listed with the bytes their layout holds for the same model shape (their own full-cache agreement
is exact by construction: tests/plugins/cla, tests/plugins/mlkv). tokens/s are printed, but they
depend on the machine's load. ``--trained RUN ...`` prints instead, for runs trained alike, the
validation bits per byte and the KV bytes per token their caches hold (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import math
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILES = ["inspect.py", "argparse.py", "typing.py", "dataclasses.py", "pathlib.py", "subprocess.py"]


def prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for name in FILES:
        ids = tokenizer.encode((lib / name).read_bytes().decode("utf-8", "replace"))
        if len(ids) >= length:
            mid = len(ids) // 2 - length // 2  # the middle of the file, away from the license header
            out.append(ids[mid:mid + length])
        if len(out) == n:
            break
    return out


def feed(model, ids: list[int], state, chunk: int, measure) -> torch.Tensor:
    """Prefill ``ids`` in chunks; returns the last logits."""
    x = torch.tensor([ids])
    logits = None
    for start in range(0, x.shape[1], chunk):
        logits = model(x[:, start:start + chunk], state=state)
        measure(state)
    return logits[:, -1]


def run_policy(model, prompt, reference, policy, chunk):
    model.backbone.cache_policy = policy
    state = model.init_state(1, len(prompt) + len(reference) + 8)
    peak = [0, 0]  # over the whole run, over the decode steps

    def measure(s, decoding=False):
        peak[0] = max(peak[0], sum(s.layer_nbytes()))
        if decoding:
            peak[1] = max(peak[1], sum(s.layer_nbytes()))

    with torch.inference_mode():
        logits = feed(model, prompt, state, chunk, measure)
        if hasattr(state, "stats"):
            state.stats.update(read=0, reads=0)  # count the decode steps' reads only
        agree, t0 = 0, time.perf_counter()
        for tok in reference:
            agree += int(int(logits.argmax(-1)) == tok)
            logits = model(torch.tensor([[tok]]), state=state)[:, -1]
            measure(state, decoding=True)
        seconds = time.perf_counter() - t0
    model.backbone.cache_policy = None
    stats = getattr(state, "stats", None)
    read = stats["read"] / stats["reads"] if stats and stats.get("reads") else float(state.lengths.max())
    held = float(state.lengths.max())
    return agree / len(reference), peak[0], len(reference) / seconds, read / held, peak[1]


def greedy_reference(model, prompt, n, chunk):
    model.backbone.cache_policy = None
    state = model.init_state(1, len(prompt) + n + 8)
    out = []
    with torch.inference_mode():
        logits = feed(model, prompt, state, chunk, lambda s: None)
        for _ in range(n):
            tok = int(logits.argmax(-1))
            out.append(tok)
            logits = model(torch.tensor([[tok]]), state=state)[:, -1]
    return out


def parse_specs(text: str | None) -> list[tuple[str, dict]] | None:
    """``name`` or ``name:field=value+field=value`` items, comma-separated (None: every policy)."""
    if not text:
        return None
    out = []
    for item in text.split(","):
        name, _, rest = item.partition(":")
        fields = {}
        for pair in filter(None, rest.split("+")):
            key, _, value = pair.partition("=")
            fields[key] = float(value) if "." in value else int(value) if value.lstrip("-").isdigit() else value
        out.append((name, fields))
    return out


def policies(registry, budget: int, specs=None):
    """Every registered cache policy with a ``budget`` field (or those ``specs`` name, with their
    settings), at ``budget`` tokens."""
    out = []
    for name, fields in specs or [(n, {}) for n in registry.names("cache_policy")]:
        rec = registry.get("cache_policy", name)
        names = {f.name for f in dataclasses.fields(rec.config)} if dataclasses.is_dataclass(rec.config) else set()
        if "budget" not in names:
            continue
        label = name + (" (" + ", ".join(f"{k} {v}" for k, v in fields.items()) + ")" if fields else "")
        out.append((label, rec.load_factory()(rec.config(budget=budget, **fields), None)))
    return out


def sharing_rows(model, context: int):
    """Bytes a cache holds after ``context`` tokens for the model's shape under each sharing layout."""
    from genloom.core.state import KVCache
    from genloom.plugins.cla.model import cla_layout
    from genloom.toolkit.kv_sharing import grouped_layout

    cfg = model.backbone.cfg
    L, kv, dh = cfg.n_layers, cfg.n_kv_heads or cfg.n_heads, cfg.d_model // cfg.n_heads
    layouts = {"none": list(range(L)), "CLA2 (cla, sharing_factor 2)": cla_layout(L, 2), "MLKV m=1 (mlkv, kv_layers 1)": grouped_layout(L, 1)}
    rows = []
    for name, src in layouts.items():
        cache = KVCache(L, 1, kv, dh, context, kv_source=src if src != list(range(L)) else None)
        rows.append((name, sum(cache.layer_nbytes())))
    return rows


def oracle_rows(model, texts, refs, chunk, budget, recent_fraction=0.5):
    """Agreement of an eviction that knows the future: per layer, the entries the full cache's decode
    steps (teacher-forced along the reference) put the most attention mass on, plus the recent window,
    within ``budget`` (one selection per layer, shared by heads, as the built-in policies make). An
    upper bound for score-based eviction at this budget, not a policy one can run."""
    from genloom.core.cache_policy import CachePolicy
    from genloom.plugins.baseline.cache_policies import attention_probabilities, keep_scored

    class Recorder(CachePolicy):  # the full cache, adding up what the decode steps' queries attend to
        name = "recorder"

        def __init__(self):
            self.on, self.mass = False, {}

        def retrieve(self, cache, layer, held, q):
            if self.on:
                positions, valid = cache.chunk
                p = attention_probabilities(q, held, positions, valid).sum(dim=(1, 2))[0]
                m = self.mass.setdefault(layer, torch.zeros(len(refs[0]) + held.size + 1, dtype=p.dtype))
                m[held.pos[0]] += p
            return None

    class Oracle(CachePolicy):
        name = "oracle"

        def __init__(self, mass):
            self.budget, self.mass = budget, mass

        def evict(self, cache, layer, held, q):
            room = cache.room(layer)
            if room is None or bool((held.valid.sum(1) <= room).all()):
                return None
            return keep_scored(held, self.mass[layer][held.pos], room, 0, int(round(recent_fraction * room)))

    agreements = []
    for prompt, ref in zip(texts, refs):
        recorder = Recorder()
        model.backbone.cache_policy = recorder
        state = model.init_state(1, len(prompt) + len(ref) + 8)
        with torch.inference_mode():
            feed(model, prompt, state, chunk, lambda s: None)
            recorder.on = True
            for tok in ref:
                model(torch.tensor([[tok]]), state=state)
        agreements.append(run_policy(model, prompt, ref, Oracle(recorder.mass), chunk)[:2])
    return sum(a for a, _ in agreements) / len(agreements), max(b for _, b in agreements)


def trained_rows(runs: list[str], n_prompts: int, length: int) -> None:
    """Trained quality and cache size of runs of the same data and steps: validation bits per byte
    (the run's metrics.json), next-token bits per token on the prompts uncached (the training-time
    forward) and through a cache (as decoding runs: a router then skips layers), and KV bytes per token, read from the cache (``layer_nbytes()``) after
    prefilling ``n_prompts`` prompts of ``length`` tokens, one at a time (a router may skip layers
    per prompt: the mean is printed)."""
    import json

    import genloom

    print(f"\n| run | backbone | steps | validation bits/byte | prompt bits/token, uncached | prompt bits/token, through the cache | "
          f"KV bytes per token (mean over {n_prompts} prompts of {length}) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        gen = genloom.load(run)
        model = gen.model.eval()
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        per_token, bits = [], [0.0, 0.0]
        with torch.inference_mode():
            for ids in prompts(gen.tokenizer, n_prompts, length):
                x = torch.tensor([ids])
                state = model.init_state(1, length)
                for i, logits in enumerate((model(x), model(x, state=state))):  # every layer; as decoding runs it
                    bits[i] += float(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:])) / math.log(2) / n_prompts
                per_token.append(sum(state.layer_nbytes()) / length)
        print(f"| {run} | {type(model.backbone).__name__} | {metrics['global_step']} | {metrics['val']['bits_per_byte']:.3f} | "
              f"{bits[0]:.3f} | {bits[1]:.3f} | {sum(per_token) / len(per_token):,.0f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/kv-bench")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--budgets", default="1.0,0.5,0.25")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trained", nargs="+", default=None, help="instead: quality and KV bytes per token of these trained runs")
    parser.add_argument("--oracle", action="store_true", help="also the future-knowing eviction bound at each budget")
    parser.add_argument("--policies", default=None, help="comma-separated name or name:field=value+field=value (default: every policy with a budget)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.trained:
        return trained_rows(args.trained, args.prompts, 256)
    import genloom
    from genloom.core.plugins import get_registry

    gen = genloom.load(args.run)
    model = gen.model.eval()
    cfg = model.backbone.cfg
    texts = prompts(gen.tokenizer, args.prompts, args.prompt_tokens)
    context = args.prompt_tokens + args.new_tokens
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, {cfg.n_layers} layers, d_model {cfg.d_model}; "
          f"{len(texts)} prompts of {args.prompt_tokens} tokens, {args.new_tokens} new tokens, prefill chunks of {args.chunk}", flush=True)
    refs = [greedy_reference(model, p, args.new_tokens, args.chunk) for p in texts]
    print("\n| policy | budget | KV bytes held (peak) | of full | decoding: of full | entries read per step (of context) | greedy agreement | tokens/s (load-dependent) |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    window = get_registry().get("cache_policy", "window")
    full_bytes = run_policy(model, texts[0], refs[0], window.load_factory()(window.config(), None), args.chunk)[1]  # every entry, model dtype
    for fraction in (float(f) for f in args.budgets.split(",")):
        budget = max(1, int(round(fraction * context)))
        for name, policy in policies(get_registry(), budget, parse_specs(args.policies)):
            results = [run_policy(model, p, r, policy, args.chunk) for p, r in zip(texts, refs)]
            agree = sum(r[0] for r in results) / len(results)
            peak = max(r[1] for r in results)
            speed = sum(r[2] for r in results) / len(results)
            read = sum(r[3] for r in results) / len(results)
            decoding = max(r[4] for r in results)
            share = f"{peak / full_bytes:.0%}"
            print(f"| {name} | {fraction:.0%} ({budget} tokens) | {peak:,} | {share} | {decoding / full_bytes:.0%} | {read:.0%} | {agree:.1%} | {speed:.0f} |", flush=True)
        if args.oracle:
            agree, peak = oracle_rows(model, texts, refs, args.chunk, budget)
            share = f"{peak / full_bytes:.0%}"
            print(f"| oracle eviction (future attention, bound) | {fraction:.0%} ({budget} tokens) | {peak:,} | {share} | - | - | {agree:.1%} | - |", flush=True)
    print(f"\n| sharing layout (same shape, {context} tokens, one sequence) | KV bytes | of no sharing |\n| --- | --- | --- |")
    rows = sharing_rows(model, context)
    for name, nbytes in rows:
        print(f"| {name} | {nbytes:,} | {nbytes / rows[0][1]:.0%} |")


if __name__ == "__main__":
    main()
