"""Measure collaborative decoding on the embedded digits (load-independent counts only).

    python tests/plugins/code_var/measure_code_var.py [--samples 8]

Fits one var-vq tokenizer (scales 1, 2, 3, 4) and trains a large (4 layers, d_model 64) and a small
(1 layer, d_model 16) VAR model on it (plain Adam loops on the training digits), then samples
``samples`` images per class with the drafter alone and with code-var for N = 1..3 drafted scales.
Prints the passes of each model, the share of image tokens the large model produced, the
parameters of each model, and a quality proxy: the mean NLL per token of the samples under the
large model's teacher-forced forward (lower = the large model finds them more likely).
"""

from __future__ import annotations

import argparse

import torch

from genloom.core import config as config_mod
from genloom.core.generation import run
from genloom.core.model import assemble
from genloom.core.plugins import get_registry

TOKENIZER = {"name": "var-vq", "scales": [1, 2, 3, 4], "codebook_size": 32, "latent_channels": 8, "hidden_channels": 16, "fit_steps": 200}


def var_config(d_model, n_layers, n_heads):
    return {
        "data": {"name": "digits", "image_size": 8, "batch_size": 64},
        "tokenizer": TOKENIZER,
        "head": {"name": "next-scale"},
        "backbone": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "rope": False},
        "objective": {"name": "next-scale", "cond_drop": 0.1},
    }


def build(cfg, tokenizer=None):
    validated = config_mod.validate(config_mod.compose(None, None, base=cfg), get_registry())
    return assemble(validated, get_registry(), tokenizer=tokenizer)


def train(built, steps, seed):
    data = built.data.load("train")
    gen = torch.Generator().manual_seed(seed)
    params = [p for n, p in built.model.named_parameters() if not n.startswith("tokenizer.")]
    opt = torch.optim.Adam(params, lr=2e-3)
    built.model.train()
    for _ in range(steps):
        i = torch.randint(len(data), (64,), generator=gen)
        loss = built.model.loss({"image": data.images[i], "label": data.labels[i]})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    built.model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    large = build(var_config(64, 4, 4))
    train(large, args.steps, 0)
    torch.manual_seed(1)
    small = build(var_config(16, 1, 2), tokenizer=large.model.tokenizer)
    train(small, args.steps, 1)
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if not n.startswith("tokenizer."))  # noqa: E731
    prompts = [[c] for c in range(10)] * args.samples
    tok = large.model.tokenizer
    labels = torch.tensor([p[0] for p in prompts])
    print(f"large {count(large.model)} parameters, small {count(small.model)}; {len(prompts)} images; guidance 1.5 (linear), top-k none")
    print("| decoder | large-model passes | refiner passes | image tokens from the large model | NLL / token under the large model |")
    print("| --- | --- | --- | --- | --- |")
    lengths = tok.scale_lengths
    for n in (4, 3, 2, 1):
        dec = large.ctx.build("decoder", {"name": "code-var", "draft_scales": n})
        if n < 4:
            dec._refiner = small.model
        out = run(large.model, prompts, dec, max_new_tokens=sum(lengths), seed=0)
        ids = tok.split_scales(torch.tensor(out.ids))
        with torch.no_grad():
            nll = large.model.head.token_nll(large.model.objective.logits(large.model, ids, labels), torch.cat(ids, 1)).mean()
        m = out.metrics.forward_passes
        name = "drafter alone (next-scale)" if n == 4 else f"code-var N={n}"
        print(f"| {name} | {m.get('target', 0)} | {m.get('refiner', 0)} | {sum(lengths[:n])}/{sum(lengths)} | {float(nll):.3f} |")


if __name__ == "__main__":
    main()
