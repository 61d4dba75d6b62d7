"""Measure grouped speculative decoding on the embedded digits (load-independent counts only).

    python tests/plugins/gsd/measure_gsd.py [--samples 8] [--window 6]

Uses the image AR target of ``tests/plugins/image_ar_helpers.py`` (trained on the fly) alone --
speculative Jacobi decoding needs no draft model -- and decodes ``samples`` images per digit class
with group sizes 1 (exact SJD), 2, 4, 8 and 16; prints mean accepted drafts per round, the
acceptance rate (accepted / window) and tokens per target pass of a sequence (accepted + 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import image_ar_helpers  # noqa: E402
from genloom.core.generation import run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8, help="images per class")
    parser.add_argument("--window", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    target, _ = image_ar_helpers.trained_pair()
    tok = target.model.tokenizer
    prompts = [[tok.class_token(c)] for c in range(tok.num_classes)] * args.samples
    print(f"{len(prompts)} images of {tok.tokens_per_image} tokens, vocabulary {tok.vocab_size}, window {args.window}")
    print("| group size | mean accepted drafts / round | acceptance rate | tokens / target pass (accepted + 1) |")
    print("| --- | --- | --- | --- |")
    for g in (1, 2, 4, 8, 16):
        dec = target.ctx.build("decoder", {"name": "gsd", "window": args.window, "group_size": g})
        m = run(target.model, prompts, dec, max_new_tokens=tok.tokens_per_image, seed=0).metrics
        print(f"| {g} | {m.mean_acceptance_length:.3f} | {m.mean_acceptance_length / args.window:.3f} | {m.mean_acceptance_length + 1:.3f} |")


if __name__ == "__main__":
    main()
