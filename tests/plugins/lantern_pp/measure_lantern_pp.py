"""Measure LANTERN++'s static trees on the embedded digits (load-independent counts only).

    python tests/plugins/lantern_pp/measure_lantern_pp.py [--samples 8]

Uses the image AR target and draft of ``tests/plugins/image_ar_helpers.py`` (trained on the fly,
about 20 s of CPU) and decodes ``samples`` images per digit class with static trees of several
shapes, exact (delta 0) and relaxed; prints a markdown table of mean accepted depth per round and
tokens per target pass of a sequence (accepted + 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import image_ar_helpers  # noqa: E402
from genloom.core.generation import run  # noqa: E402

TREES = [(1, 1, 1, 1), (2, 2, 1, 1), (4, 2, 2, 1)]
RULES = [(1, 0.0), (8, 0.2), (32, 0.4)]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8, help="images per class")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    target, draft = image_ar_helpers.trained_pair()
    tok = target.model.tokenizer
    prompts = [[tok.class_token(c)] for c in range(tok.num_classes)] * args.samples
    print(f"{len(prompts)} images of {tok.tokens_per_image} tokens, codebook {tok.codebook_size}")
    print("| branching | tree nodes | k | delta | mean accepted depth / round | tokens / target pass (accepted + 1) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for branching in TREES:
        for k, delta in RULES:
            dec = target.ctx.build("decoder", {"name": "lantern-pp", "draft": image_ar_helpers.DRAFT, "branching": list(branching), "neighbourhood_size": k, "delta": delta})
            dec._draft = draft.model
            out = run(target.model, prompts, dec, max_new_tokens=tok.tokens_per_image, seed=0)
            m = out.metrics
            print(f"| {list(branching)} | {dec.shape.size} | {k} | {delta} | {m.mean_acceptance_length:.3f} | {m.mean_acceptance_length + 1:.3f} |")


if __name__ == "__main__":
    main()
