"""Any-order, learnt-order, insertion and re-translation decoders against a left-to-right prefix LM
on the embedded reverse task.

All: bytes, a 2-layer d_model=64 transformer, reverse strings of 3-8 letters (data ``seq2seq``,
source_length 8, target_length 9), AdamW steps of 64 pairs at a one-cycle learning rate of 3e-3,
seed 0, one thread (the recipe of benchmarks/seq2seq_reverse.py). The sigma-GPT model is trained
once and decoded greedily in two orders and by rejection sampling. Prints the held-out test
split's exact match and the forward passes to decode its 200 sources as one batch (plus wall
clock, not a result on a busy machine).

    python benchmarks/anyorder_reverse.py [steps] [ar] [sigma] [sigma-l2r] [short-ar] [lo-arm] [ilm] [enconter] [fretna]

``sigma-l2r`` is the control: the sigma-GPT head (learnt absolute position tables) trained in the
left-to-right order only. ``short-ar`` and ``lo-arm`` use strings of 3-4 letters (source_length 4,
target_length 5): LO-ARM scores every step of two sampled orders per pair, about ten times the
work of a left-to-right step.
"""

from __future__ import annotations

import sys
import time

import torch

from genloom.core.generation import Generator
from genloom.testing import tiny_model


def train(head, objective, steps: int, lr: float = 3e-3, length: int = 8):
    base = {
        "data": {"name": "seq2seq", "task": "reverse", "source_length": length, "target_length": length + 1, "max_length": length, "train_size": 20000, "eval_size": 200},
        "tokenizer": {"name": "bytes"}, "head": head, "objective": objective,
        "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
    }
    built = tiny_model(base=base, data=True, seed=0)
    model = built.model
    loader = torch.utils.data.DataLoader(built.data.load("train", model.tokenizer, built.ctx), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    torch.manual_seed(0)
    start, step = time.perf_counter(), 0
    while step < steps:
        for batch in loader:
            loss = model.loss(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            schedule.step()
            step += 1
            if step >= steps:
                break
    model.eval()
    return built, time.perf_counter() - start


def evaluate(built, decoder: dict):
    test = built.data.load("test", built.model.tokenizer, built.ctx)
    start = time.perf_counter()
    result = Generator(built).generate(source=[s for s, _ in test.pairs], max_new_tokens=built.ctx.target_length, decoder=decoder, seed=0)
    seconds = time.perf_counter() - start
    exact = sum(ids == t + [test.eos_id] for ids, (_, t) in zip(result.ids, test.pairs)) / len(test.pairs)
    return exact, result.metrics.forward_passes.get("target"), seconds


def first_positions(built, test, n: int = 200):
    """How often the learnt policy fills each target position first (greedy), over the test sources."""
    from genloom.core.pattern import FULL
    from genloom.plugins.lo_arm.head import generator_step

    S = built.ctx.source_length
    ids = torch.stack([test[i]["ids"] for i in range(min(n, len(test)))])
    revealed = torch.zeros_like(ids, dtype=torch.bool)
    revealed[:, :S] = True
    with torch.no_grad():
        _, order_lp = generator_step(built.model, ids, revealed, FULL)
    return torch.bincount(order_lp.argmax(-1) - S, minlength=ids.shape[1] - S).tolist()


if __name__ == "__main__":
    torch.set_num_threads(1)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rows = sys.argv[2:] or ["ar", "sigma", "sigma-l2r", "short-ar", "lo-arm", "ilm", "enconter", "fretna"]
    print(f"{steps} training steps")
    print("| model | decoding | test exact match | forward passes (200 sources, one batch) | train s | decode s |")
    print("| --- | --- | --- | --- | --- | --- |")
    if "ar" in rows:
        built, train_s = train({"name": "lm"}, {"name": "next-token"}, steps)
        exact, passes, s = evaluate(built, {"name": "greedy"})
        print(f"| AR prefix LM | greedy, left to right | {exact:.3f} | {passes} | {train_s:.0f} | {s:.2f} |", flush=True)
    if "sigma" in rows:
        built, train_s = train({"name": "sigma-gpt", "max_positions": 32}, {"name": "sigma-gpt"}, steps)
        for label, node in (("greedy, random order", {"name": "sigma-gpt", "greedy": True}), ("greedy, left to right", {"name": "sigma-gpt", "greedy": True, "order": "left-to-right"})):
            exact, passes, s = evaluate(built, node)
            print(f"| sigma-GPT (random orders) | {label} | {exact:.3f} | {passes} | {train_s:.0f} | {s:.2f} |", flush=True)
        test = built.data.load("test", built.model.tokenizer, built.ctx)
        result = Generator(built).generate(source=[src for src, _ in test.pairs], max_new_tokens=9, decoder={"name": "sigma-gpt-burst"}, seed=0)
        exact = sum(ids == t + [test.eos_id] for ids, (_, t) in zip(result.ids, test.pairs)) / len(test.pairs)
        rounds = result.metrics.extra["rounds"]
        print(f"| sigma-GPT (random orders) | rejection sampling (burst) | {exact:.3f} | {2 * sum(rounds) / len(rounds):.2f} per source (rows one by one) | {train_s:.0f} | - |", flush=True)
    if "sigma-l2r" in rows:
        built, train_s = train({"name": "sigma-gpt", "max_positions": 32}, {"name": "sigma-gpt", "order": "left-to-right"}, steps)
        exact, passes, s = evaluate(built, {"name": "sigma-gpt", "greedy": True, "order": "left-to-right"})
        print(f"| sigma-GPT head, left-to-right training only | greedy, left to right | {exact:.3f} | {passes} | {train_s:.0f} | {s:.2f} |", flush=True)
    if "short-ar" in rows:
        built, train_s = train({"name": "lm"}, {"name": "next-token"}, steps, length=4)
        exact, passes, s = evaluate(built, {"name": "greedy"})
        print(f"| AR prefix LM, 3-4 letters | greedy, left to right | {exact:.3f} | {passes} | {train_s:.0f} | {s:.2f} |", flush=True)
    if "lo-arm" in rows:
        built, train_s = train({"name": "lo-arm"}, {"name": "lo-arm"}, steps, length=4)
        exact, passes, s = evaluate(built, {"name": "lo-arm", "greedy": True})
        print(f"| LO-ARM, 3-4 letters | greedy, learnt order | {exact:.3f} | {passes} | {train_s:.0f} | {s:.2f} |", flush=True)
        test = built.data.load("test", built.model.tokenizer, built.ctx)
        print("first positions chosen:", first_positions(built, test), flush=True)

    if "ilm" in rows:
        built, train_s = train({"name": "ilm"}, {"name": "ilm"}, steps)
        exact, passes, s = evaluate(built, {"name": "ilm", "greedy": True})
        print(f"| ILM (insertions from an empty canvas) | greedy, one insertion per pass | {exact:.3f} | {passes} | {train_s:.0f} | {s:.2f} |", flush=True)
    if "enconter" in rows:
        built, train_s = train({"name": "enconter"}, {"name": "enconter"}, steps)
        exact, passes, s = evaluate(built, {"name": "enconter", "greedy": True})
        print(f"| ENCONTER (no constraints, from an empty canvas) | greedy, parallel insertions | {exact:.3f} | {passes} | {train_s:.0f} | {s:.2f} |", flush=True)
    if "fretna" in rows:
        built, train_s = train({"name": "ctc", "upsample_ratio": 2}, {"name": "nat-ctc"}, steps)
        exact, passes, s = evaluate(built, {"name": "nat-ctc"})
        print(f"| NAT-CTC, offline (whole source) | one pass | {exact:.3f} | {passes} | {train_s:.0f} | {s:.2f} |", flush=True)
        test = built.data.load("test", built.model.tokenizer, built.ctx)
        sources = [src for src, _ in test.pairs]
        result = Generator(built).generate(source=sources, max_new_tokens=built.ctx.target_length, decoder={"name": "fretna"}, seed=0)
        exact = sum(ids == t + [test.eos_id] for ids, (_, t) in zip(result.ids, test.pairs)) / len(test.pairs)
        updates = result.metrics.extra["source_updates"]
        erased = result.metrics.extra["erasure"]
        print(f"| FReTNA, source revealed one token at a time | one NAT pass per update | {exact:.3f} | {passes and result.metrics.forward_passes.get('target')} | {train_s:.0f} | - |", flush=True)
        print(f"source updates: {sum(updates)} in all, {sum(updates) / len(updates):.2f} per source (= source tokens); "
              f"tokens erased: {sum(erased) / len(erased):.2f} per source, {sum(erased) / sum(updates):.3f} per update", flush=True)
