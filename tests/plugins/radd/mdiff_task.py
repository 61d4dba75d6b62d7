"""A small synthetic conditional task for masked-diffusion decoders, trainable on CPU in about a minute.

A sequence is ``prompt | reasoning = answer .`` over bytes: the prompt is ``k`` random lowercase
letters and ``|``; the "reasoning" is every letter shifted by one (``abc -> bcd``) and ``=``; the
answer is the prompt reversed and ``.``. The generated region is ``2k + 2`` tokens and the answer
is its last ``k + 1``. A time-free masked-diffusion model (the ``radd`` objective on the baseline
bidirectional transformer) learns it quickly, so decoders can be compared on accuracy, network
calls and wall clock on the same trained model.
"""

from __future__ import annotations

import time

import torch

A, BAR, EQ, DOT = ord("a"), ord("|"), ord("="), ord(".")


def make_batch(n: int, k: int = 6, generator: torch.Generator | None = None) -> dict:
    letters = torch.randint(0, 26, (n, k), generator=generator)
    col = lambda v: torch.full((n, 1), v, dtype=torch.long)  # noqa: E731
    prompt = torch.cat([letters + A, col(BAR)], 1)
    reasoning = torch.cat([(letters + 1) % 26 + A, col(EQ)], 1)
    answer = torch.cat([letters.flip(1) + A, col(DOT)], 1)
    ids = torch.cat([prompt, reasoning, answer], 1)
    prompt_mask = torch.zeros_like(ids, dtype=torch.bool)
    prompt_mask[:, : k + 1] = True
    return {"ids": ids, "prompt_mask": prompt_mask}


def prompts_and_targets(n: int, k: int = 6, seed: int = 1234):
    batch = make_batch(n, k, torch.Generator().manual_seed(seed))
    ids = batch["ids"]
    return ids[:, : k + 1].tolist(), ids[:, k + 1:]


CONFIG = {
    "seed": 0,
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
    "objective": {"name": "radd", "loss_form": "lambda-dce"},
}


def train(steps: int = 400, batch_size: int = 64, k: int = 6, lr: float = 3e-3, seed: int = 0, log_every: int = 0,
          d_model: int = 64, n_layers: int = 2):
    """Assemble the tiny model from ``CONFIG`` through the registry and train it; returns (built, seconds, last loss)."""
    from genloom.testing import tiny_model

    torch.manual_seed(seed)
    config = {**CONFIG, "backbone": {**CONFIG["backbone"], "d_model": d_model, "n_layers": n_layers}}
    built = tiny_model(base=config)
    model = built.model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    loss = float("nan")
    model.train()
    for step in range(steps):
        out = model.loss(make_batch(batch_size, k, g))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss = out["loss"].item()
        if log_every and step % log_every == 0:
            print(f"step {step} loss {loss:.3f} masked_ce {out['masked_ce'].item():.3f}", flush=True)
    model.eval()
    return built, time.perf_counter() - t0, loss


def evaluate(built, node, prompts, targets, *, seed: int = 0, k: int = 6):
    """Decode ``prompts`` with decoder ``node``; accuracy, answer accuracy, network calls, seconds, tokens/call."""
    from genloom.core.generation import run

    decoder = built.ctx.build("decoder", node, path="decoder")
    t0 = time.perf_counter()
    res = run(built.model, prompts, decoder, max_new_tokens=targets.shape[1], seed=seed)
    seconds = time.perf_counter() - t0
    out = torch.tensor([seq + [-1] * (targets.shape[1] - len(seq)) for seq in res.ids])
    answer = slice(targets.shape[1] - (k + 1), None)
    return {
        "ids": out,
        "exact": float((out == targets).all(-1).float().mean()),
        "answer": float((out[:, answer] == targets[:, answer]).all(-1).float().mean()),
        "token_acc": float((out == targets).float().mean()),
        "calls": res.metrics.forward_passes.get("target", 0),
        "tokens_per_call": res.metrics.tokens_per_forward,
        "steps": res.metrics.steps,
        "seconds": seconds,
        "decoder": decoder,
    }
