"""Figures for docs/catalogue/block-diffusion.md (run: python tests/plugins/block_diffusion/measure_bd3.py).

Untrained toy models with re-drawn (sharp) weights; CPU; numbers are for the record, not asserted.
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bd3_helpers import build, random_ids  # noqa: E402
from test_bd3_objective import ar_cross_entropy  # noqa: E402

from genloom.core.generation import run  # noqa: E402
from genloom.plugins.block_diffusion.objective import looped_noisy_logits  # noqa: E402


def timed(fn, repeats=3):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.perf_counter() - start) / repeats


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print("## vectorised [x_t, x_0] pass vs per-block KV-cache loop (d_model 64, 2 layers, B = 4, L = 128)")
    for block_size in (1, 4, 16):
        built = build(block_size, d_model=64)
        model, objective = built.model, built.model.objective
        x0 = random_ids(4, 128, seed=block_size)
        x_t, _, _ = objective.corrupt(x0, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            vec, t_vec = timed(lambda: objective.noisy_logits(model, x_t, x0))
            loop, t_loop = timed(lambda: looped_noisy_logits(model, x_t, x0, block_size))
        print(f"L'={block_size:3d}: max |diff| = {float((vec - loop).abs().max()):.2e}; vectorised {t_vec * 1e3:.1f} ms, loop {t_loop * 1e3:.1f} ms ({t_loop / t_vec:.1f}x)")

    print("\n## block size 1: NELBO vs AR cross-entropy (B = 1, L = 16)")
    built = build(1)
    model, objective = built.model, built.model.objective
    x0 = random_ids(1, 16, seed=5)
    with torch.no_grad():
        ar = float(ar_cross_entropy(model, x0, objective.mask_id).mean())
        ids = x0.expand(4000, -1)
        masked = torch.ones_like(ids, dtype=torch.bool)
        full = objective.loss_given_noise(model, x0, masked[:1], torch.ones(1, 16))
        g = torch.Generator().manual_seed(0)
        _, m, t = objective.corrupt(ids, generator=g)
        term, _ = objective.weighted_loss(objective.noisy_logits(model, torch.where(m, objective.mask_id, ids), ids), ids, m, t)
    draws = term.mean(1)
    print(f"AR CE {ar:.6f}; t = 1: {float(full['loss']):.6f} (|diff| {abs(float(full['loss']) - ar):.1e}, variance 0)")
    print(f"t ~ U[0,1] (stratified), 4000 draws: mean {float(draws.mean()):.4f} +- {float(draws.std()) / math.sqrt(len(draws)):.4f}, per-draw std {float(draws.std()):.3f}")

    print("\n## decoding (d_model 64, 2 layers, 4 prompts, 128 new tokens, L' = 4, 4 steps)")
    built = build(4, d_model=64)
    prompts = [[104, 101, 108, 108, 111], [1, 2], list(range(40, 48)), [7]]
    results = {}
    for cache in (True, False):
        decoder = built.ctx.build("decoder", {"name": "block-diffusion", "cache": cache, "steps": 4})
        res = run(built.model, prompts, decoder, max_new_tokens=128, seed=0)
        res2 = run(built.model, prompts, decoder, max_new_tokens=128, seed=0)
        results[cache] = res2
        m = res2.metrics
        print(f"cache={cache!s:5}: {m.forward_passes['target']} forward passes, {m.tokens_per_forward:.2f} tokens/pass/sequence, {m.tokens_per_second:.0f} tokens/s")
    print("identical tokens:", results[True].ids == results[False].ids)


if __name__ == "__main__" and "--train" not in sys.argv:
    main()


def train_compare(steps: int = 250, seq_len: int = 64, batch_size: int = 16):
    """Tiny models on the Python stdlib bytes: validation NELBO (bits/byte) for L' = 1 (t = 1), 4, 16 and AR."""
    from genloom.core import config as config_module
    from genloom.core.model import assemble
    from genloom.core.plugins import get_registry

    torch.set_num_threads(1)
    variants = {
        "next-token (AR)": {"name": "next-token"},
        "BD3 L'=1, t=1": {"name": "block-diffusion", "block_size": 1, "mask_rate_min": 1.0, "mask_rate_max": 1.0},
        "BD3 L'=4": {"name": "block-diffusion", "block_size": 4},
        "BD3 L'=16": {"name": "block-diffusion", "block_size": 16},
    }
    for label, objective in variants.items():
        torch.manual_seed(0)
        node = {
            "data": {"name": "pystdlib", "seq_len": seq_len, "batch_size": batch_size},
            "tokenizer": {"name": "bytes"}, "head": {"name": "lm"},
            "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 2},
            "objective": objective,
        }
        registry = get_registry()
        built = assemble(config_module.validate(config_module.compose(None, base=node), registry), registry)
        model = built.model
        train = built.data.load("train", model.tokenizer, built.ctx)
        val = built.data.load("val", model.tokenizer, built.ctx)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        model.train()
        start = time.perf_counter()
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size].tolist()
            batch = torch.utils.data.default_collate([train[i] for i in idx])
            loss = model.loss(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - start
        model.eval()
        torch.manual_seed(1)
        nats = nbytes = 0.0
        with torch.no_grad():
            for i in range(0, 40 * batch_size, batch_size):
                batch = torch.utils.data.default_collate([val[j] for j in range(i, i + batch_size)])
                out = model.loss(batch)
                nats += float(out["_nats"])
                nbytes += float(out.get("_bytes", batch["target_bytes"].sum()))
        print(f"{label:16s}: val {nats / math.log(2) / nbytes:.3f} bits/byte (NELBO for BD3) after {steps} steps ({seconds:.0f} s)")


if __name__ == "__main__" and "--train" in sys.argv:
    train_compare()
