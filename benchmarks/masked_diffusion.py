"""Measure the masked-diffusion decoders on one tiny trained model (the figures in docs/catalogue).

    python benchmarks/masked_diffusion.py [--train-steps 400] [--quick]

Trains the synthetic ``prompt | reasoning = answer .`` task (``tests/plugins/radd/mdiff_task.py``,
shared with the tests) with the ``radd`` objective, then decodes the same 64 held-out prompts with every decoder and prints markdown
tables: accuracy, network calls, tokens per call, wall clock and its ratio to the baseline
confidence sampler (``masked-diffusion``) at the same step budget.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "plugins", "radd"))
from mdiff_task import evaluate, prompts_and_targets, train  # noqa: E402

INF = float("inf")


def row(name, r, base_seconds=None):
    ratio = f"{r['seconds'] / base_seconds:.2f}" if base_seconds else "1.00"
    return (f"| {name} | {r['token_acc']:.3f} | {r['exact']:.3f} | {r['answer']:.3f} | {r['calls']} | {r['tokens_per_call']:.2f} | "
            f"{r['seconds']:.2f} | {ratio} |")


HEADER = ("| decoder | token accuracy | exact match | answer match | network calls | tokens / call | seconds | wall-clock vs baseline |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")


def best_of(built, node, P, T, repeats):
    """Evaluate ``repeats`` times (same seed, same output); keep the fastest wall clock."""
    out = None
    for _ in range(repeats):
        r = evaluate(built, node, P, T)
        if out is None or r["seconds"] < out["seconds"]:
            out = r
    return out


def section_confidence(built, P, T, G, repeats):
    print(f"\n### Confidence-based samplers, {len(P)} prompts in one batch, {G} generated tokens\n")
    print(HEADER)
    for steps in (G, G // 2):
        base = best_of(built, {"name": "masked-diffusion", "steps": steps}, P, T, repeats)
        print(row(f"masked-diffusion, {steps} steps (baseline)", base))
        for label, node in [
            ("pc-sampler lambda=0, no calibration", {"name": "pc-sampler", "position_decay": 0.0, "calibration": False}),
            ("pc-sampler lambda=0.25, stdlib prior", {"name": "pc-sampler"}),
            ("pc-sampler lambda=50 (left to right)", {"name": "pc-sampler", "position_decay": 50.0}),
        ]:
            r = best_of(built, {**node, "steps": steps}, P, T, repeats)
            same = "(= baseline ids)" if torch.equal(r["ids"], base["ids"]) else ""
            print(row(f"{label}, {steps} steps {same}", r, base["seconds"]))
        for label, node in [
            ("prophet thresholds inf", {"name": "prophet", "thresholds": [INF] * 3}),
            ("prophet prob. gap 0.9/0.7/0.5", {"name": "prophet"}),
            ("prophet prob. gap 0.99/0.95/0.9", {"name": "prophet", "thresholds": [0.99, 0.95, 0.9]}),
            ("prophet logit gap 7.5/5.0/2.5", {"name": "prophet", "gap_space": "logit", "thresholds": [7.5, 5.0, 2.5]}),
        ]:
            r = best_of(built, {**node, "steps": steps, "answer_length": 7}, P, T, repeats)
            same = "(= baseline ids)" if torch.equal(r["ids"], base["ids"]) else ""
            rows = r["decoder"].stats["row_steps"].float().mean().item()
            print(row(f"{label}, {steps} steps {same} [mean steps per sequence {rows:.1f}]", r, base["seconds"]))


def section_radd(built, P, T, G, repeats):
    print(f"\n### RADD ancestral sampler, cache on vs off, {len(P)} prompts in one batch\n")
    print("| steps | cache | token accuracy | exact match | network calls | mean evaluations per sequence (NFE) | seconds | wall-clock vs no cache | same samples |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for steps in (G, 64, 256):
        off = best_of(built, {"name": "radd", "steps": steps, "cache": False}, P, T, repeats)
        on = best_of(built, {"name": "radd", "steps": steps, "cache": True}, P, T, repeats)
        same = torch.equal(on["ids"], off["ids"])
        for label, r in (("off", off), ("on", on)):
            nfe = r["decoder"].stats["row_calls"].float().mean().item()
            print(f"| {steps} | {label} | {r['token_acc']:.3f} | {r['exact']:.3f} | {r['calls']} | {nfe:.1f} | {r['seconds']:.2f} | "
                  f"{r['seconds'] / off['seconds']:.2f} | {same} |")
    P, T = P[:16], T[:16]
    print(f"\n### RADD ancestral sampler one sequence at a time ({len(P)} prompts, batch 1)\n")
    print("| steps | cache | total network calls | calls per sequence | seconds | wall-clock vs no cache |")
    print("| --- | --- | --- | --- | --- | --- |")
    for steps in (64, 256):
        res = {}
        for cache in (False, True):
            calls, t0 = 0, time.perf_counter()
            outs = []
            for p, t in zip(P, T):
                r = evaluate(built, {"name": "radd", "steps": steps, "cache": cache}, [p], t[None])
                calls += r["calls"]
                outs.append(r["ids"])
            res[cache] = (calls, time.perf_counter() - t0, torch.cat(outs))
        assert torch.equal(res[True][2], res[False][2])
        for cache in (False, True):
            calls, sec, _ = res[cache]
            print(f"| {steps} | {'on' if cache else 'off'} | {calls} | {calls / len(P):.1f} | {sec:.2f} | {sec / res[False][1]:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-steps", type=int, nargs="+", default=[250, 400])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    P, T = prompts_and_targets(args.prompts)
    G = T.shape[1]
    for steps in args.train_steps:
        built, seconds, loss = train(steps=steps)
        print(f"\n## Model after {steps} training steps ({seconds:.0f} s on CPU, {args.threads} thread; last loss {loss:.3f} nats/token)")
        section_confidence(built, P, T, G, args.repeats)
        section_radd(built, P, T, G, args.repeats)


if __name__ == "__main__":
    main()
