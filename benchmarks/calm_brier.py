"""CALM at toy scale: the chunk autoencoder's held-out accuracy, and BrierLM of a briefly trained
CALM model against a next-token baseline of similar size on the same BPE tokens.

    python benchmarks/calm_brier.py [--fit-steps 2000] [--train-steps 300] [--eval-windows 64] [--ae-only]

1. ``configs/calm.yaml`` is assembled on the embedded standard-library text: the BPE is fitted,
   then the chunk autoencoder trains ``--fit-steps`` steps (its ``fit``). Its token accuracy is
   measured on the whole validation split (consecutive chunks), decoding the posterior mean and
   a posterior sample.
2. The CALM model (energy head over a 2-layer transformer) trains ``--train-steps`` steps
   (``genloom.testing.train_briefly``); a baseline (the same transformer, an ``lm`` head,
   ``next-token``, twice the layers for a similar parameter count) trains as many steps on the same tokens with the same fitted BPE.
3. Brier-1..4 (two-sample estimates) on the first ``--eval-windows`` validation windows, at the
   chunk-aligned contexts where CALM predicts (every 4th token, from the 4th on), for both models;
   BrierLM = 100 x their geometric mean. Counts and accuracies are load-independent; no timing is
   reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from genloom.core import config as config_mod
from genloom.core.model import assemble
from genloom.plugins.calm.objective import chunk_validity
from genloom.plugins.calm.tokenizer import token_stream
from genloom.testing import train_briefly
from genloom.toolkit.brier import autoregressive_brier, brier_lm, brier_ngram_estimates

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "calm.yaml"


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit-steps", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--max-train-bytes", type=int, default=2000000)
    ap.add_argument("--ae-only", action="store_true", help="stop after the autoencoder's figures")
    ap.add_argument("--override", nargs="*", default=[], help="further key=value overrides of configs/calm.yaml")
    args = ap.parse_args()
    torch.manual_seed(0)
    overrides = [f"tokenizer.fit_steps={args.fit_steps}", f"data.max_train_bytes={args.max_train_bytes}", *args.override]
    calm = assemble(config_mod.load(str(CONFIG), overrides))
    tok = calm.model.tokenizer
    val_set = calm.data.load("val", tok, calm.ctx)
    val = token_stream(val_set)
    g = torch.Generator().manual_seed(0)
    print(f"autoencoder: K={tok.chunk_size}, l={tok.latent_dim}, vocab={tok.vocab_size}, {parameters(tok)} parameters, {args.fit_steps} steps")
    print(f"  held-out token accuracy ({len(val)} val tokens): mean {tok.reconstruction_accuracy(val):.5f}, "
          f"posterior sample {tok.reconstruction_accuracy(val, sample=True, generator=g):.5f}")
    if args.ae_only:
        return

    base = config_mod.compose(str(CONFIG), overrides)
    base["tokenizer"] = dict(base["tokenizer"]["base"])
    base["head"] = {"name": "lm"}
    base["objective"] = {"name": "next-token"}
    base["decoder"] = {"name": "sampling"}
    base["backbone"]["n_layers"] = 2 * base["backbone"]["n_layers"]  # similar parameter count: CALM adds the input MLP and the generator
    baseline = assemble(config_mod.validate(base), tokenizer=tok.base)
    calm_params = parameters(calm.model) - parameters(tok)
    print(f"CALM model {calm_params} parameters (autoencoder excluded); baseline {parameters(baseline.model)} parameters")
    train_briefly(calm, args.train_steps, batch_size=16)
    train_briefly(baseline, args.train_steps, batch_size=16)

    K = tok.chunk_size
    windows = torch.stack([val_set[i]["ids"] for i in range(min(args.eval_windows, len(val_set)))])
    masks = torch.stack([val_set[i]["mask"] for i in range(min(args.eval_windows, len(val_set)))])
    n = windows.shape[1] // K
    ids = windows[:, : n * K]
    with torch.no_grad():
        model = calm.model.eval()
        h = model.hidden(ids[:, : (n - 1) * K])
        valid = chunk_validity({"ids": windows, "mask": masks}, n, K)[:, 1:]
        truth = tok.chunks(ids)[:, 1:]
        gen = torch.Generator().manual_seed(1)
        x1 = tok.decode_vectors(model.head.sample(h, gen))
        x2 = tok.decode_vectors(model.head.sample(h, gen))
        calm_est = brier_ngram_estimates(x1, x2, truth)[valid].mean(0)
        base_est = autoregressive_brier(baseline.model.eval(), ids, range(K, n * K, K), K, torch.Generator().manual_seed(1))
        base_est = base_est[valid].mean(0)
    print(f"Brier-1..{K} at {int(valid.sum())} chunk-aligned contexts of {ids.shape[0]} val windows, after {args.train_steps} steps:")
    print("  CALM     " + "  ".join(f"{v:.4f}" for v in calm_est.tolist()) + f"   BrierLM {brier_lm(calm_est.tolist()):.2f}")
    print("  baseline " + "  ".join(f"{v:.4f}" for v in base_est.tolist()) + f"   BrierLM {brier_lm(base_est.tolist()):.2f}")
    print(f"  backbone passes per {K} generated tokens: CALM 1, baseline {K}")


if __name__ == "__main__":
    main()
