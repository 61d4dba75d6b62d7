"""Digits paired with their names: the image as pixel tokens, the answer as bytes.

``batch(indices)`` -> ``{"ids": (B, 64 + T), "prompt_mask": (B, 64 + T)}``: the 64 pixel tokens
(intensities 0..16, themselves byte ids) are the prompt; the answer is the digit's English name and
``.``, padded with EOS to ``T`` = 6 tokens.
"""

from __future__ import annotations

import numpy as np
import torch

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ANSWER_LENGTH = 6


def answer_ids(label: int, eos_id: int) -> list[int]:
    ids = list((NAMES[label] + ".").encode())
    return ids + [eos_id] * (ANSWER_LENGTH - len(ids))


def digits(eos_id: int = 256, test_fraction: float = 0.2, seed: int = 0):
    """(train, test) dicts of pixel tokens (N, 64), answers (N, 6) and labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = torch.tensor(d.images.reshape(len(d.images), -1), dtype=torch.long)  # 0..16
    labels = torch.tensor(d.target, dtype=torch.long)
    answers = torch.tensor([answer_ids(int(y), eos_id) for y in labels])
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    pick = lambda idx: {"pixels": pixels[idx], "answers": answers[idx], "labels": labels[idx]}  # noqa: E731
    return pick(train), pick(test)


def batch(split: dict, indices) -> dict:
    pixels, answers = split["pixels"][indices], split["answers"][indices]
    ids = torch.cat([pixels, answers], 1)
    prompt = torch.zeros_like(ids, dtype=torch.bool)
    prompt[:, : pixels.shape[1]] = True
    return {"ids": ids, "prompt_mask": prompt}
