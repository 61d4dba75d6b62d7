"""Logits processors: callables ``(logits (B, V), history (B, T)) -> logits``.

``history`` holds prompt + generated ids, left-padded with -1.
"""

from __future__ import annotations

import torch

NEG = float("-inf")


class Temperature:
    def __init__(self, t: float):
        self.t = t

    def __call__(self, logits, history):
        return logits / self.t


class TopK:
    def __init__(self, k: int):
        self.k = k

    def __call__(self, logits, history):
        k = min(self.k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, NEG)


class TopP:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, logits, history):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.float().softmax(-1)
        # drop a token when the mass before it already reaches p (the top token always stays)
        drop = (probs.cumsum(-1) - probs) >= self.p
        drop_orig = torch.zeros_like(drop).scatter(-1, order, drop)
        return logits.masked_fill(drop_orig, NEG)


class MinP:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, logits, history):
        probs = logits.float().softmax(-1)
        return logits.masked_fill(probs < self.p * probs.max(-1, keepdim=True).values, NEG)


class RepetitionPenalty:
    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, logits, history):
        if history.numel() == 0:
            return logits
        V = logits.shape[-1]
        # padding (-1) and out-of-vocabulary ids go to an extra column that is dropped
        hist = torch.where((history >= 0) & (history < V), history, V).to(logits.device)
        seen = torch.zeros(logits.shape[0], V + 1, dtype=torch.bool, device=logits.device)
        seen.scatter_(-1, hist, True)
        seen = seen[:, :V]
        penalised = torch.where(logits > 0, logits / self.penalty, logits * self.penalty)
        return torch.where(seen, penalised, logits)


def build_temperature(config, ctx):
    return Temperature(config.temperature)


def build_top_k(config, ctx):
    return TopK(config.k)


def build_top_p(config, ctx):
    return TopP(config.p)


def build_min_p(config, ctx):
    return MinP(config.p)


def build_repetition_penalty(config, ctx):
    return RepetitionPenalty(config.penalty)
