"""AR-Diffusion's token timesteps: the movement-speed line, for training and for decoding.

``token_timesteps(t, N, T, anchor)`` is the paper's ``f(n, t)`` for n = 1..N: the line through the
start point ``(n_s, t_s) = (clip(N - t, 0, N), clip(t - N, 0, T))`` and the anchor point
``(anchor * N, T)``, clipped to [0, T]. ``decoding_table(K, N, T, anchor)`` evaluates it at K even
decrements of the sentence-level t from N + T to 0 and drops rows that repeat the previous one (a
step in which no token moves would cost a network evaluation and change nothing).
"""

from __future__ import annotations

import math

import torch


def token_timesteps(sentence_t, length: int, steps: int, anchor: float) -> torch.Tensor:
    """(..., N) float64 timesteps of the N target tokens at sentence-level ``sentence_t`` (...,)."""
    t = torch.as_tensor(sentence_t, dtype=torch.float64)[..., None]
    n = torch.arange(1, length + 1, dtype=torch.float64)
    n_s, t_s = (length - t).clamp(0, length), (t - length).clamp(0, steps)
    if math.isinf(anchor):
        slope = torch.zeros_like(t_s)  # every token moves at the same speed
    else:
        slope = (steps - t_s) / (anchor * length - n_s)
    return (slope * (n - n_s) + t_s).clamp(0, steps)


def decoding_table(decoding_steps: int, length: int, steps: int, anchor: float) -> torch.Tensor:
    """(K' + 1, N) timesteps per decoding step, from all-T to all-0, consecutive repeats dropped."""
    sentence = torch.linspace(float(length + steps), 0.0, decoding_steps + 1, dtype=torch.float64)
    table = token_timesteps(sentence, length, steps, anchor)
    keep = torch.ones(table.shape[0], dtype=torch.bool)
    keep[1:] = (table[1:] != table[:-1]).any(-1)
    return table[keep]
