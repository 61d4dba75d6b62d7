"""Measure Farzi Data: real-data cross-entropy of the inner learner trained on the distilled summary,
against the same learner trained on as many random real sequences, on 1024 random real sequences,
and untrained.

    python tests/plugins/farzi/measure_farzi.py [--steps 200]

The summary is trained with AdamW (the config's learning rate) on the config's training batches;
every learner gets the same ``inner_steps`` Adam steps from the same three initialisations, and is
scored on up to 32 validation batches (nats per byte).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch
from torch.nn import functional as F

from genloom.plugins.farzi.adam import adam_forward
from genloom.plugins.farzi.summary import ar_init, ar_loss
from genloom.testing import tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "farzi.yaml"


def batches(built, split, batch_size, generator=None):
    ds = built.data.load(split, built.model.tokenizer, built.ctx)
    order = torch.randperm(len(ds), generator=generator) if generator is not None else torch.arange(len(ds))
    for start in range(0, len(ds) - batch_size + 1, batch_size):
        yield built.data.collate([ds[int(i)] for i in order[start:start + batch_size]])


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    built = tiny_model(CONFIG, data=True)
    objective = built.model.objective
    cfg = objective.config
    optimizer = torch.optim.AdamW(objective.summary.parameters(), lr=built.model.config.sections["optimizer"].lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    step = 0
    objective.train()
    while step < args.steps:
        for batch in batches(built, "train", 32, g):
            out = objective.loss(built.model, batch)
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            step += 1
            if step % 25 == 0:
                print(f"step {step}: outer loss {float(out['loss'].detach()):.3f}", flush=True)
            if step >= args.steps:
                break
    vocab, loss = objective.vocab, functools.partial(ar_loss, order=cfg.order)
    val = torch.cat([F.one_hot(b["ids"], vocab).double() for _, b in zip(range(32), batches(built, "val", 32))])
    train = torch.cat([F.one_hot(b["ids"], vocab).double() for b in batches(built, "train", 32)])
    random_real = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:cfg.n_synthetic]]
    many = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(2))[:1024]]
    sources = {"farzi summary": objective.summary.data().detach().double(), f"{cfg.n_synthetic} random real sequences": random_real,
               f"1024 random real sequences (of {len(train)})": many}
    print(f"\nreal validation cross-entropy (nats per byte) after {cfg.inner_steps} Adam steps (lr {cfg.inner_lr}), mean of 3 initialisations")
    untrained = []
    for name, data in sources.items():
        scores = []
        for seed in range(3):
            theta0 = ar_init(vocab, cfg.order, torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
            theta, _, _ = adam_forward(loss, theta0, data, cfg.inner_steps, objective.hyper)
            scores.append(float(loss(theta, val)))
            if len(untrained) < 3:
                untrained.append(float(loss(theta0, val)))
        print(f"| {name} | {sum(scores) / len(scores):.3f} |")
    print(f"| untrained learner | {sum(untrained) / len(untrained):.3f} |")


if __name__ == "__main__":
    main()
