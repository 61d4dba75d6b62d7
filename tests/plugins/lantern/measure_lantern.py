"""Measure LANTERN's relaxed acceptance on the embedded digits (load-independent counts only).

    python tests/plugins/lantern/measure_lantern.py [--samples 8] [--gamma 4]

Fits the raster-vq quantizer and trains the image AR target and draft of ``image_ar_helpers``
(about 20 s of CPU), then decodes ``samples`` images per digit class with exact speculative
sampling and with LANTERN at several (neighbourhood size, delta) and prints a markdown table:
mean accepted drafts per round, the acceptance rate (accepted / gamma) and the tokens committed
per target pass of a sequence (accepted + 1; the last, truncated round of each image counts as full).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import image_ar_helpers  # noqa: E402
from genloom.core.generation import run  # noqa: E402

SETTINGS = [(1, 0.0), (8, 0.1), (8, 0.2), (8, 0.4), (32, 0.2), (32, 0.4)]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8, help="images per class")
    parser.add_argument("--gamma", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    target, draft = image_ar_helpers.trained_pair()
    tok = target.model.tokenizer
    prompts = [[tok.class_token(c)] for c in range(tok.num_classes)] * args.samples
    print(f"{len(prompts)} images of {tok.tokens_per_image} tokens, codebook {tok.codebook_size}, gamma {args.gamma}")
    print("| k | delta | mean accepted drafts / round | acceptance rate | tokens / target pass (accepted + 1) |")
    print("| --- | --- | --- | --- | --- |")
    for k, delta in SETTINGS:
        dec = target.ctx.build("decoder", {"name": "lantern", "draft": image_ar_helpers.DRAFT, "gamma": args.gamma, "neighbourhood_size": k, "delta": delta})
        dec._draft = draft.model
        out = run(target.model, prompts, dec, max_new_tokens=tok.tokens_per_image, seed=0)
        m = out.metrics
        rate = m.mean_acceptance_length / args.gamma
        print(f"| {k} | {delta} | {m.mean_acceptance_length:.3f} | {rate:.3f} | {m.mean_acceptance_length + 1:.3f} |")


if __name__ == "__main__":
    main()
