"""EdiT5 against an autoregressive prefix LM of the same size on the sentence-fusion task.

Both: bytes, a 2-layer d_model=64 transformer (4 heads), data ``edit-fusion`` (source_length 24,
2160 training pairs, seed 0), ``genloom.testing.train_briefly`` (AdamW, one-cycle learning rate
3e-3, batches of 64, seed 0) for each step budget, one thread. Evaluation: the 300 pairs of the
held-out test split (sources never seen in training), decoded greedily as one batch with
``generate(source=...)``. Prints the exact match (target and its end-of-sequence id), the
autoregressive steps per output (EdiT5: insertion-sequence tokens; the prefix LM: generated
tokens, end-of-sequence included), the output tokens per sequence and the batch's forward passes.

    python benchmarks/edit5_fusion.py --steps 200,600
"""

from __future__ import annotations

import argparse
import time

import torch

from genloom.core.generation import Generator
from genloom.testing import tiny_model, train_briefly

MODELS = {
    "AR prefix LM (`lm` head, `next-token`, `greedy`)": ({"name": "lm"}, {"name": "next-token"}, {"name": "greedy"}),
    "EdiT5 (`edit5` head, objective, decoder)": ({"name": "edit5"}, {"name": "edit5"}, {"name": "edit5"}),
}


def run(head, objective, decoder, steps: int):
    base = {
        "data": {"name": "edit-fusion", "source_length": 24, "target_length": 24, "batch_size": 64},
        "tokenizer": {"name": "bytes"}, "head": head, "objective": objective, "decoder": decoder,
        "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
    }
    built = tiny_model(base=base, data=True, seed=0)
    start = time.perf_counter()
    train_briefly(built, steps)
    train_seconds = time.perf_counter() - start
    test = built.data.load("test", built.model.tokenizer, built.ctx)
    start = time.perf_counter()
    result = Generator(built).generate(source=[s for s, _ in test.pairs], max_new_tokens=24, seed=0)
    decode_seconds = time.perf_counter() - start
    eos = test.eos_id
    n = len(test.pairs)
    exact = sum(list(ids) == t + [eos] for ids, (_, t) in zip(result.ids, test.pairs)) / n
    outputs = sum(len(t) + 1 for _, t in test.pairs) / n
    steps_per_output = sum(result.metrics.extra["insertion_steps"]) / n if "insertion_steps" in result.metrics.extra else sum(len(ids) for ids in result.ids) / n
    return exact, steps_per_output, outputs, result.metrics.forward_passes, train_seconds, decode_seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="200,600", help="comma list of training step budgets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | train steps | test exact match | AR steps per output | output tokens per output | forward passes (300 sources, one batch) | train s | decode s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for steps in [int(s) for s in args.steps.split(",")]:
        for name, spec in MODELS.items():
            exact, per, outputs, passes, train_s, decode_s = run(*spec, steps)
            print(f"| {name} | {steps} | {exact:.3f} | {per:.2f} | {outputs:.2f} | {passes} | {train_s:.0f} | {decode_s:.2f} |", flush=True)
