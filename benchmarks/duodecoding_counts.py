"""DuoDecoding counts on tiny untrained transformers (the catalogue page's "Measured" table).

Target: a 2-layer transformer (d_model 32, vocabulary 6); draft: the same architecture with the
target's weights plus Gaussian noise (``noise`` times each tensor's std). Six prompts decoded one
at a time, 48 new tokens each, ``gamma 3``, ``top_k 3``, seeds 0-5. Prints load-independent
counts: tokens per target verification pass (prefill excluded), extra sequences per round,
rounds that reused the block drafted ahead, and whether greedy output equals the target's greedy.

    python benchmarks/duodecoding_counts.py
"""

from __future__ import annotations

import torch

from genloom.core.generation import run
from genloom.testing import tiny_model

TARGET = {
    "tokenizer": {"name": "ids", "vocab_size": 6},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 2},
    "objective": {"name": "next-token"},
}
PROMPTS = [[1, 2, 3], [4, 0], [5, 5, 1, 2], [3], [2, 2], [0, 1, 0, 5]]


def decoder(built, noise, **extra):
    dec = built.ctx.build("decoder", {"name": "duodecoding", "draft": TARGET, **extra})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p_draft, p_target in zip(dec.draft.parameters(), built.model.parameters()):
            p_draft.copy_(p_target + noise * p_target.std() * torch.randn(p_target.shape, generator=gen))
    return dec


def main() -> int:
    torch.manual_seed(0)
    built = tiny_model(base=TARGET)
    built.model.eval()
    for noise in (0.5, 1.0):
        for threshold in (0.0, None, 0.6, 1.0):
            for greedy in (True, False):
                tokens = passes = extra = reused = rounds = 0
                equal = True
                for i, prompt in enumerate(PROMPTS):
                    out = run(built.model, [prompt], decoder(built, noise, gamma=3, threshold=threshold, top_k=3, greedy=greedy), max_new_tokens=48, seed=i)
                    if greedy:
                        equal &= out.ids == run(built.model, [prompt], built.ctx.build("decoder", "greedy"), max_new_tokens=48).ids
                    m, e = out.metrics, out.metrics.extra
                    tokens += m.tokens_generated
                    passes += m.forward_passes["target"] - 1
                    extra += e["duo_extra_sequences"]
                    reused += e["duo_reused_blocks"]
                    rounds += e["duo_rounds"]
                print(f"noise={noise} threshold={threshold} {'greedy' if greedy else 'sampling'}: tokens/target pass={tokens / passes:.2f} "
                      f"extra sequences/round={extra / rounds:.2f} reused={reused}/{rounds}" + (f" equals greedy={equal}" if greedy else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
