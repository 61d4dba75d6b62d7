"""STree on a tiny Mamba target: tree vs chain speculation, one-pass tree verification vs per-path rows.

    python benchmarks/stree_decoding.py [--tokens 48] [--repeats 5]

Target: a random 2-layer Mamba (d_model 32); draft: the target's weights plus Gaussian noise
(``--noise`` times each tensor's std), so acceptance is partial. Greedy decoding of 4 prompts at
batch 4; every system's output is checked equal to plain greedy decoding. Reports mean accepted
drafts per round, tokens per target pass (prefill included) and the median seconds of interleaved
runs (threads pinned to 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, pin_threads, spread  # noqa: E402

from genloom.core.generation import run  # noqa: E402
from genloom.testing import tiny_model  # noqa: E402

VOCAB = 16
PROMPTS = [[1, 2, 3, 4, 5], [2, 7], [5, 0, 1], [9, 9, 3, 1]]


def config():
    return {
        "tokenizer": {"name": "ids", "vocab_size": VOCAB},
        "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
        "backbone": {"name": "mamba", "d_model": 32, "n_layers": 2, "d_state": 8, "d_conv": 4},
        "objective": {"name": "next-token"},
    }


def stree(target, branching, noise):
    dec = target.ctx.build("decoder", {"name": "stree", "draft": config(), "branching": list(branching), "greedy": True})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p_draft, p_target in zip(dec.draft.parameters(), target.model.parameters()):
            p_draft.copy_(p_target + noise * p_target.std() * torch.randn(p_target.shape, generator=gen))
    return dec


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.5)
    args = parser.parse_args()
    pin_threads(1)
    torch.manual_seed(0)
    target = tiny_model(base=config())
    target.model.eval()
    backbone_type = type(target.model.backbone)
    decoders = {
        "greedy": target.ctx.build("decoder", "greedy"),
        "chain (1,1,1)": stree(target, (1, 1, 1), args.noise),
        "tree (3,2,1)": stree(target, (3, 2, 1), args.noise),
        "tree (3,2,1), per-path rows": stree(target, (3, 2, 1), args.noise),
    }
    metrics = {}

    def system(name):
        def go():
            if "per-path" in name:
                backbone_type.serves_trees, saved = (lambda self: False), backbone_type.serves_trees
            try:
                out = run(target.model, PROMPTS, decoders[name], max_new_tokens=args.tokens)
            finally:
                if "per-path" in name:
                    backbone_type.serves_trees = saved
            metrics[name] = out.metrics
            return out.ids
        return go

    secs, identical = interleaved({name: system(name) for name in decoders}, args.repeats)
    print(f"outputs identical to greedy: {identical}")
    base = spread(secs["greedy"])["median"]
    print("| decoder | mean acceptance length | tokens / target pass | seconds (median) | vs greedy |")
    print("| --- | --- | --- | --- | --- |")
    for name in decoders:
        m = metrics[name]
        acc = f"{m.mean_acceptance_length:.2f}" if m.mean_acceptance_length is not None else "-"
        med = spread(secs[name])["median"]
        print(f"| {name} | {acc} | {m.tokens_per_forward:.2f} | {med:.3f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
