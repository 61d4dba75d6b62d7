"""Continuous batching vs one-at-a-time vs static batching on a stream of requests.

A seeded trace of ``--requests`` requests with staggered arrivals (exponential gaps of mean
``--gap`` engine steps) and mixed lengths (prompts uniform in ``--prompt``, outputs uniform in
``--new``; no end-of-sequence id, so each request produces exactly its length) is served three ways
by the same model with greedy decoding:

- ``one-at-a-time``: each request alone (``generate.run`` at batch 1), in arrival order;
- ``static``: batches of ``--batch`` consecutive requests; each batch is left-padded and decoded
  until its longest request finishes (finished rows keep being computed);
- ``continuous``: the core's continuous batcher (``genloom.core.batching``): per-request prefill,
  one fused decode step over the live requests, eviction of finished ones; ``--batch`` caps the live
  requests too, so static and continuous batching hold at most the same number of rows.

Every mode's tokens are checked against one-at-a-time (they must be equal). The load-independent
figures come from a forward hook on the backbone: forward passes, positions computed (rows x new
positions of each pass), wasted positions (computed minus useful: padding and finished rows; the
useful ones are each request's prompt plus its generated tokens but the last), padded KV slots
attended (slots of a pass's cache that hold no token of their row), and generated tokens per decode
pass. Tokens/s and requests/s are printed too, but they depend on the machine's load.

Wall-clock throughput (``--repeats`` > 0): the same requests, all available at once (offline
serving), through the public API: one at a time (``Generator.generate`` per request), static
batches of ``--batch`` consecutive requests (``Generator.generate`` on each, left-padded, until its
longest request ends) and ``Generator.serve(max_batch_size=--batch)``. The three run round-robin
on one pinned thread (``benchmarks/timing.py``: one warm-up each, then ``--repeats`` rounds, the
order alternating); it prints the median requests/s and tokens/s of each with the interquartile
range, and the median of the per-round ratios over static batching with its min-max. Run it on a
quiet machine.

    python benchmarks/continuous_batching.py [--requests 24] [--batch 8] [--gap 3] [--prompt 4 48] [--new 8 96]
                                             [--backbone transformer|mamba] [--threads 1] [--seed 0] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, pin_threads, spread  # noqa: E402

BACKBONES = {
    "transformer": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
    "mamba": {"name": "mamba", "d_model": 64, "n_layers": 2, "d_state": 8},
}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8, help="rows at most: static batch size and continuous batching's max_batch_size")
    ap.add_argument("--gap", type=float, default=3.0, help="mean engine steps between arrivals")
    ap.add_argument("--prompt", type=int, nargs=2, default=[4, 48], metavar=("MIN", "MAX"))
    ap.add_argument("--new", type=int, nargs=2, default=[8, 96], metavar=("MIN", "MAX"))
    ap.add_argument("--backbone", choices=sorted(BACKBONES), default="transformer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds of the wall-clock comparison (0: counts only)")
    ap.add_argument("--json", default=None, metavar="FILE")
    return ap.parse_args(argv)


def trace(args):
    """The request stream: (prompt ids, new tokens, arrival step), in arrival order."""
    rng = random.Random(args.seed)
    out, t = [], 0.0
    for _ in range(args.requests):
        prompt = [rng.randrange(1, 256) for _ in range(rng.randint(*args.prompt))]
        out.append((prompt, rng.randint(*args.new), int(t)))
        t += rng.expovariate(1.0 / args.gap) if args.gap > 0 else 0.0
    return out


class Counter:
    """Forward hook on the backbone: passes, positions computed, padded KV slots attended."""

    def __init__(self, backbone):
        self.reset()
        self.handle = backbone.register_forward_hook(self, with_kwargs=True)

    def reset(self):
        self.passes = self.positions = self.padded_slots = self.decode_passes = 0

    def __call__(self, module, args, kwargs, output):
        h = args[0]
        self.passes += 1
        self.positions += h.shape[0] * h.shape[1]
        self.decode_passes += int(h.shape[1] == 1)
        state = kwargs.get("state")
        valid, used = getattr(state, "valid", None), getattr(state, "used", None)
        if torch.is_tensor(valid) and isinstance(used, int):
            self.padded_slots += int(h.shape[0] * used - valid[:, :used].sum())


def one_at_a_time(model, greedy, requests, batch, counter):
    """Serve requests alone in arrival order; returns ids and each request's finish time (in passes)."""
    from genloom.core.generation import run

    ids, finish, now = [], [], 0
    for p, n, a in requests:
        now = max(now, a)
        before = counter.passes
        ids.append(run(model, [p], greedy, max_new_tokens=n, eos_id=None).ids[0])
        now += counter.passes - before
        finish.append(now)
    return ids, finish, {}


def static(model, greedy, requests, batch, counter):
    """When the server is free, batch every request that has arrived (at most ``batch``), left-pad
    them and decode until the longest finishes (finished rows keep being computed)."""
    from genloom.core.generation import run

    ids, finish, now, i = [None] * len(requests), [None] * len(requests), 0, 0
    while i < len(requests):
        now = max(now, requests[i][2])
        group = [j for j in range(i, min(i + batch, len(requests))) if requests[j][2] <= now]
        before = counter.passes
        out = run(model, [requests[j][0] for j in group], greedy, max_new_tokens=max(requests[j][1] for j in group), eos_id=None).ids
        now += counter.passes - before
        for j, row in zip(group, out):
            ids[j], finish[j] = row[: requests[j][1]], now  # a row's result is out when its batch ends
        i = group[-1] + 1
    return ids, finish, {}


def continuous(model, greedy, requests, batch, counter):
    """The continuous batcher, fed each request when the clock (in passes) reaches its arrival."""
    from genloom.core.batching import ContinuousBatcher, Request

    engine = ContinuousBatcher(model, greedy, eos_id=None, max_batch_size=batch)
    ids, finish, now, i = [None] * len(requests), [None] * len(requests), 0, 0
    while i < len(requests) or not engine.done():
        while i < len(requests) and requests[i][2] <= now:
            engine.submit(Request(requests[i][0], max_new_tokens=requests[i][1], id=i))  # arrives now
            i += 1
        if engine.done():
            now = requests[i][2]  # idle until the next arrival
            continue
        before = counter.passes
        done = engine.step()
        now += counter.passes - before
        for c in done:
            ids[c.id], finish[c.id] = c.ids, now
    return ids, finish, {"peak_batch": engine.metrics.peak_batch, "evictions": engine.metrics.evictions}


MODES = {"one-at-a-time": one_at_a_time, "static": static, "continuous": continuous}


def throughput(gen, requests, batch: int, repeats: int) -> dict:
    """Wall-clock requests/s and tokens/s of the three ways to serve ``requests`` offline (all at once)."""
    def one():
        return [gen.generate([p], max_new_tokens=n, decoder="greedy", eos_token_id=[]).ids[0] for p, n, _ in requests]

    def static_batches():
        out = []
        for i in range(0, len(requests), batch):
            group = requests[i:i + batch]
            ids = gen.generate([p for p, _, _ in group], max_new_tokens=max(n for _, n, _ in group), decoder="greedy", eos_token_id=[]).ids
            out += [row[:n] for row, (_, n, _) in zip(ids, group)]
        return out

    def serve():
        result = gen.serve([{"prompt": p, "max_new_tokens": n, "id": i} for i, (p, n, _) in enumerate(requests)], decoder="greedy",
                           max_batch_size=batch, eos_token_id=[])
        return [c.ids for c in result.completions]

    secs, identical = interleaved({"one-at-a-time": one, "static": static_batches, "continuous (Generator.serve)": serve}, repeats)
    tokens = sum(n for _, n, _ in requests)
    rows = {name: {"requests_per_second": spread([len(requests) / t for t in ts]), "tokens_per_second": spread([tokens / t for t in ts]),
                   "speedup_over_static": spread([s / t for s, t in zip(secs["static"], ts)])} for name, ts in secs.items()}
    return {"same_tokens": identical, "rows": rows}


def main(argv=None) -> int:
    import genloom

    args = parse(argv)
    pin_threads(args.threads)
    config = {"seed": args.seed, "tokenizer": {"name": "bytes"}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
              "backbone": BACKBONES[args.backbone], "objective": {"name": "next-token"}}
    gen = genloom.load(config)
    model = gen.model.eval()
    greedy = gen.decoder("greedy")
    requests = trace(args)
    useful = sum(len(p) + n - 1 for p, n, _ in requests)
    tokens = sum(n for _, n, _ in requests)
    counter = Counter(model.backbone)
    rows, reference = [], None
    for mode, serve in MODES.items():
        counter.reset()
        t0 = time.perf_counter()
        ids, finish, extra = serve(model, greedy, requests, args.batch, counter)
        seconds = time.perf_counter() - t0
        reference = ids if reference is None else reference
        generated = sum(len(i) for i in ids)
        decode_tokens = generated - len(requests)  # the first token of each request comes from its prefill
        latency = [f - a for f, (_, _, a) in zip(finish, requests)]
        rows.append({
            "mode": mode, "same_tokens": ids == reference, "forward_passes": counter.passes, "decode_passes": counter.decode_passes,
            "positions": counter.positions, "wasted_positions": counter.positions - useful, "padded_kv_slots": counter.padded_slots,
            "tokens_per_decode_pass": decode_tokens / counter.decode_passes if counter.decode_passes else None,
            "makespan_passes": max(finish), "mean_latency_passes": sum(latency) / len(latency),
            "seconds": seconds, "tokens_per_second": generated / seconds, "requests_per_second": len(requests) / seconds, **extra,
        })
    counter.handle.remove()
    print(f"trace: {len(requests)} requests, {tokens} tokens to generate, prompts {args.prompt[0]}-{args.prompt[1]}, outputs {args.new[0]}-{args.new[1]}, "
          f"mean gap {args.gap} steps; backbone {args.backbone}; at most {args.batch} rows; {args.threads} thread(s)")
    print("| mode | same tokens | forward passes | tokens / decode pass | positions computed | wasted positions | padded KV slots | "
          "makespan (passes) | mean latency (passes) | tokens/s (load-dependent) | requests/s (load-dependent) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        per = f"{r['tokens_per_decode_pass']:.2f}" if r["tokens_per_decode_pass"] else "-"
        print(f"| {r['mode']} | {r['same_tokens']} | {r['forward_passes']} | {per} | {r['positions']} | {r['wasted_positions']} | {r['padded_kv_slots']} | "
              f"{r['makespan_passes']} | {r['mean_latency_passes']:.1f} | {r['tokens_per_second']:.0f} | {r['requests_per_second']:.2f} |")
    timed = None
    if args.repeats > 0:
        timed = throughput(gen, requests, args.batch, args.repeats)
        print(f"\nwall clock, all {len(requests)} requests available at once, {args.repeats} interleaved rounds, {args.threads} thread(s); "
              f"same tokens in every call: {timed['same_tokens']}")
        print("| mode | requests/s (median, IQR) | tokens/s (median, IQR) | speed-up over static batching (median, min-max) |")
        print("| --- | --- | --- | --- |")
        for name, r in timed["rows"].items():
            q, t, x = r["requests_per_second"], r["tokens_per_second"], r["speedup_over_static"]
            print(f"| {name} | {q['median']:.2f} ({q['q1']:.2f}-{q['q3']:.2f}) | {t['median']:.0f} ({t['q1']:.0f}-{t['q3']:.0f}) | "
                  f"{x['median']:.2f}x ({x['min']:.2f}-{x['max']:.2f}) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "wall_clock": timed}, indent=2))
    return 0 if all(r["same_tokens"] for r in rows) and (timed is None or timed["same_tokens"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
