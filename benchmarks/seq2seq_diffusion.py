"""The non-autoregressive and diffusion seq2seq plugins against an autoregressive prefix LM.

All: bytes, a 2-layer d_model=64 transformer, reverse strings of 3-8 letters (data ``seq2seq``,
source_length 8, target_length 9), the same AdamW steps of 64 pairs at a one-cycle learning rate
of 3e-3, seed 0, one thread. Prints, per model, the held-out test split's exact match (200 sources
never seen in training), the forward passes to decode them as one batch, and the wall clock of
training and decoding (the clock depends on the machine's load; the other columns do not).

    python benchmarks/seq2seq_diffusion.py [--steps 1000] [--only diffuseq,tess] [--decode-steps 5,20]
"""

from __future__ import annotations

import argparse
import time

import torch

from genloom.core.generation import Generator
from genloom.testing import tiny_model, train_briefly

MODELS = {
    "ar": ("AR prefix LM (next-token, greedy)", {"name": "lm"}, {"name": "next-token"}, {"name": "greedy"}),
    "nat-ctc": ("NAT-CTC (k=2, one pass)", {"name": "ctc", "upsample_ratio": 2}, {"name": "nat-ctc"}, {"name": "nat-ctc"}),
    "diffuseq": ("DiffuSeq (20 DDIM steps)", {"name": "embedding-diffusion", "embed_dim": 16}, {"name": "diffuseq", "steps": 1000}, {"name": "diffuseq", "steps": 20}),
    "ar-diffusion": ("AR-Diffusion (20 steps)", {"name": "embedding-diffusion", "embed_dim": 16}, {"name": "ar-diffusion", "steps": 1000}, {"name": "ar-diffusion", "steps": 20}),
    "tess": ("TESS (20 steps, self-conditioning)", {"name": "simplex-diffusion"}, {"name": "tess", "steps": 1000}, {"name": "tess", "steps": 20}),
}


def train(head, objective, decoder, steps: int = 1000, lr: float = 3e-3):
    base = {
        "data": {"name": "seq2seq", "task": "reverse", "source_length": 8, "target_length": 9, "max_length": 8, "train_size": 20000, "eval_size": 200},
        "tokenizer": {"name": "bytes"}, "head": head, "objective": objective, "decoder": decoder,
        "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
    }
    built = train_briefly(tiny_model(base=base, data=True, seed=0), steps, lr=lr)
    model = built.model
    return built


def evaluate(built, split: str = "test", decoder=None):
    """(exact match, forward passes) of decoding the split's sources as one batch (``decoder``: a
    node replacing the config's, e.g. another step count)."""
    test = built.data.load(split, built.model.tokenizer, built.ctx)
    result = Generator(built).generate(source=[s for s, _ in test.pairs], max_new_tokens=built.ctx.target_length, seed=0, decoder=decoder)
    exact = sum(ids == t + [test.eos_id] for ids, (_, t) in zip(result.ids, test.pairs)) / len(test.pairs)
    return exact, result.metrics.forward_passes.get("target")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--only", default=",".join(MODELS))
    parser.add_argument("--decode-steps", default="20", help="comma list: reverse steps to decode the diffusion models with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| model | test exact match | forward passes (200 sources, one batch) | train s | decode s |  ({args.steps} steps)")
    print("| --- | --- | --- | --- | --- |")
    for key in args.only.split(","):
        name, head, objective, decoder = MODELS[key]
        start = time.perf_counter()
        built = train(head, objective, decoder, steps=args.steps)
        train_s = time.perf_counter() - start
        variants = [(name, None)]
        if "steps" in decoder:  # a diffusion decoder: one row per step count, same trained model
            variants = [(name.split(" (")[0] + f" ({k} steps)", {**decoder, "steps": int(k)}) for k in args.decode_steps.split(",")]
        for label, node in variants:
            start = time.perf_counter()
            with torch.no_grad():
                exact, passes = evaluate(built, decoder=node)
            print(f"| {label} | {exact:.3f} | {passes} | {train_s:.0f} | {time.perf_counter() - start:.2f} |", flush=True)
