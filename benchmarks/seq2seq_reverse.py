"""NAT-CTC against an autoregressive prefix LM of the same size on the embedded reverse task.

Both: bytes, a 2-layer d_model=64 transformer, reverse strings of 3-8 letters (data ``seq2seq``,
source_length 8), 1000 AdamW steps of 64 pairs at a one-cycle learning rate of 3e-3, seed 0, one
thread. Prints the held-out test split's exact match, the forward passes to decode its 200
sources as one batch, and the wall clock of training and decoding.

    python benchmarks/seq2seq_reverse.py
"""

from __future__ import annotations

import time

import torch

from genloom.core.generation import Generator
from genloom.testing import tiny_model

MODELS = {
    "AR prefix LM (next-token, greedy)": ({"name": "lm"}, {"name": "next-token"}, "greedy"),
    "NAT-CTC (k=2, one pass)": ({"name": "ctc", "upsample_ratio": 2}, {"name": "nat-ctc"}, "nat-ctc"),
}


def run(head, objective, decoder, steps: int = 1000, lr: float = 3e-3):
    base = {
        "data": {"name": "seq2seq", "task": "reverse", "source_length": 8, "target_length": 9, "max_length": 8, "train_size": 20000, "eval_size": 200},
        "tokenizer": {"name": "bytes"}, "head": head, "objective": objective, "decoder": {"name": decoder},
        "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
    }
    built = tiny_model(base=base, data=True, seed=0)
    model = built.model
    train = built.data.load("train", model.tokenizer, built.ctx)
    test = built.data.load("test", model.tokenizer, built.ctx)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
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
    train_seconds = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    result = Generator(built).generate(source=[s for s, _ in test.pairs], max_new_tokens=9, decoder=decoder)
    decode_seconds = time.perf_counter() - start
    eos = test.eos_id
    exact = sum(ids == t + [eos] for ids, (_, t) in zip(result.ids, test.pairs)) / len(test.pairs)
    return exact, result.metrics.forward_passes, train_seconds, decode_seconds


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("| model | test exact match | forward passes (200 sources, one batch) | train s | decode s |")
    print("| --- | --- | --- | --- | --- |")
    for name, spec in MODELS.items():
        exact, passes, train_s, decode_s = run(*spec)
        print(f"| {name} | {exact:.3f} | {passes.get('target')} | {train_s:.0f} | {decode_s:.2f} |")
