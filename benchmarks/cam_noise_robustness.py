"""CAM noise augmentation: next-byte accuracy of the diffusion head's sample as the fed-back
inputs get noisier, for a model trained with augmentation (max_noise 0.5) and without (0).

Both: bytes of the standard library (data ``pystdlib``, windows of 64), the ``cam`` head
(16-dimensional byte embeddings), a 2-layer d_model=64 transformer, the same AdamW steps of 32
windows, seed 0, one thread. Evaluation: 64 validation windows; inputs ``x + level * eps`` (the
error a model meets when it reads its own samples), each position's next embedding sampled with
20 ancestral steps (seed 0) and rounded to its nearest byte; the figure is the fraction that
equals the true next byte. The augmented model is told the level it reads (as at inference); the
plain model has no level input.

    python benchmarks/cam_noise_robustness.py [--steps 600]
"""

from __future__ import annotations

import argparse

import torch

from genloom.plugins.cam_noise_aug.objective import backbone_outputs
from genloom.testing import tiny_model
from genloom.toolkit.embedding_diffusion import round_to_tokens


def train(max_noise: float, steps: int):
    base = {
        "data": {"name": "pystdlib", "seq_len": 64, "batch_size": 32, "max_train_bytes": 2000000, "max_eval_bytes": 100000},
        "tokenizer": {"name": "bytes"},
        "head": {"name": "cam", "latent_dim": 16, "diffusion_steps": 100, "head_width": 128},
        "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
        "objective": {"name": "cam-noise-aug", "max_noise": max_noise},
        "decoder": {"name": "cam", "inference_noise": 0.1, "diffusion_steps": 20},
    }
    built = tiny_model(base=base, data=True, seed=0)
    model = built.model
    loader = torch.utils.data.DataLoader(built.data.load("train", model.tokenizer, built.ctx), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    torch.manual_seed(0)
    step = 0
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
    return built


@torch.no_grad()
def accuracy(built, level: float, told: float, windows: int = 64) -> float:
    model, head = built.model, built.model.head
    val = built.data.load("val", model.tokenizer, built.ctx)
    ids = torch.stack([val[i]["ids"] for i in range(min(windows, len(val)))])
    x = head.vectors(ids)
    g = torch.Generator().manual_seed(0)
    noisy = x[:, :-1] + level * torch.randn(x[:, :-1].shape, generator=g)
    h = backbone_outputs(model, head.inputs(noisy, told))
    sample = head.sample_next(h.reshape(-1, h.shape[-1]), 20, g).view(*h.shape[:2], -1)
    return float((round_to_tokens(sample, head.latents) == ids[:, 1:]).float().mean())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    levels = (0.0, 0.1, 0.3, 0.5)
    print(f"| training ({args.steps} steps) | " + " | ".join(f"input noise {l}" for l in levels) + " |")
    print("| --- |" + " --- |" * len(levels))
    for max_noise in (0.0, 0.5):
        built = train(max_noise, args.steps)
        cells = [accuracy(built, level, level if max_noise > 0 else 0.0) for level in levels]
        print(f"| max_noise {max_noise} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)
