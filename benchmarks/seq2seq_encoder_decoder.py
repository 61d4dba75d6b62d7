"""The two forms of source conditioning on the embedded reverse task, at the same parameter count.

A prefix LM (the ``transformer`` backbone under ``prefix(S)``) against the ``encoder-decoder``
backbone (an encoder over the source block, a causal decoder with cross-attention), both with the
``lm`` head, the ``next-token`` objective and greedy decoding on the same data: reverse strings of
3-8 letters (data ``seq2seq``, source_length 8, target_length 9, bytes), d_model 64, 4 heads,
1000 AdamW steps of 64 pairs at a one-cycle learning rate of 3e-3 (``genloom.testing.train_briefly``),
seed 0, one thread. The prefix LM's feed-forward width is raised so that its parameter count
matches the encoder-decoder's (which has cross-attention projections besides).

Prints each model's parameter count, the held-out test split's exact match (200 sources decoded as
one batch, the whole target and its end-of-sequence id), the forward passes of that decode, the
bytes its incremental state holds at the end, and the encoder calls (encoder-decoder only).

    python benchmarks/seq2seq_encoder_decoder.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import time

import torch

from genloom.core.generation import Generator
from genloom.testing import tiny_model, train_briefly

DATA = {"name": "seq2seq", "task": "reverse", "source_length": 8, "target_length": 9, "max_length": 8, "train_size": 20000, "eval_size": 200}
MODELS = {
    "prefix LM (transformer, 2 layers, ffn_hidden 235)": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4, "ffn_hidden": 235},
    "encoder-decoder (1 encoder + 1 decoder layer)": {"name": "encoder-decoder", "d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "n_heads": 4},
    "prefix LM (transformer, 4 layers, ffn_hidden 235)": {"name": "transformer", "d_model": 64, "n_layers": 4, "n_heads": 4, "ffn_hidden": 235},
    "encoder-decoder (2 encoder + 2 decoder layers)": {"name": "encoder-decoder", "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "n_heads": 4},
}


def run(backbone: dict, steps: int):
    base = {"data": DATA, "tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": backbone, "objective": {"name": "next-token"},
            "decoder": {"name": "greedy"}}
    built = tiny_model(base=base, data=True, seed=0)
    params = sum(p.numel() for p in built.model.parameters())
    start = time.perf_counter()
    train_briefly(built, steps, lr=3e-3, batch_size=64, seed=0)
    train_seconds = time.perf_counter() - start
    test = built.data.load("test", built.model.tokenizer, built.ctx)
    encoder_calls = []
    if hasattr(built.model.backbone, "encode"):
        encode = built.model.backbone.encode
        built.model.backbone.encode = lambda source: encoder_calls.append(source.shape[0]) or encode(source)
    states = []
    init_state = built.model.init_state
    built.model.init_state = lambda *a, **k: states.append(init_state(*a, **k)) or states[-1]
    start = time.perf_counter()
    result = Generator(built).generate(source=[s for s, _ in test.pairs], max_new_tokens=9, decoder="greedy")
    decode_seconds = time.perf_counter() - start
    exact = sum(ids == t + [test.eos_id] for ids, (_, t) in zip(result.ids, test.pairs)) / len(test.pairs)
    return params, exact, result.metrics.forward_passes.get("target"), states[-1].nbytes, encoder_calls, train_seconds, decode_seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--models", default="", help="comma list of row numbers (0-based); default all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [int(i) for i in args.models.split(",")] if args.models else range(len(MODELS))
    print("| model | parameters | test exact match | forward passes | state bytes (200 sources) | encoder calls (rows) | train s | decode s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, (name, backbone) in enumerate(MODELS.items()):
        if i not in rows:
            continue
        params, exact, passes, nbytes, calls, train_s, decode_s = run(backbone, args.steps)
        print(f"| {name} | {params} | {exact:.3f} | {passes} | {nbytes} | {len(calls)} ({sum(calls)}) | {train_s:.0f} | {decode_s:.2f} |", flush=True)
