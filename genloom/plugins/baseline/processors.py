"""Logits processors: callables ``(logits (B, V), history (B, T)) -> logits``.

``history`` holds prompt + generated ids, left-padded with -1. Each processor follows the
definition of the transformers processor of the same name (tests compare them on identical logits);
``min_tokens_to_keep`` keeps at least that many of the most likely tokens whatever the rule says.
"""

from __future__ import annotations

import torch

NEG = float("-inf")


def _protect_top(remove: torch.Tensor, logits: torch.Tensor, keep: int) -> torch.Tensor:
    """Never remove the ``keep`` most likely tokens."""
    if keep <= 0:
        return remove
    top = logits.topk(min(keep, logits.shape[-1]), dim=-1).indices
    return remove.scatter(-1, top, False)


def _protect_at_least(remove: torch.Tensor, logits: torch.Tensor, keep: int) -> torch.Tensor:
    """Never remove a token at least as likely as the ``keep``-th most likely one (ties stay)."""
    kth = logits.topk(min(max(keep, 1), logits.shape[-1]), dim=-1).values[..., -1:]
    return remove & (logits < kth)


class Temperature:
    def __init__(self, t: float):
        self.t = t

    def __call__(self, logits, history):
        return logits / self.t


class TopK:
    def __init__(self, k: int, min_tokens_to_keep: int = 1):
        self.k = max(k, min_tokens_to_keep)

    def __call__(self, logits, history):
        k = min(self.k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, NEG)


class TopP:
    def __init__(self, p: float, min_tokens_to_keep: int = 1):
        self.p = p
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, logits, history):
        if self.p >= 1.0:
            return logits  # the whole distribution: exactly nothing to drop
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.float().softmax(-1)
        # drop a token when the mass before it already reaches p (the top token always stays)
        drop = (probs.cumsum(-1) - probs) >= self.p
        drop[..., : self.min_tokens_to_keep] = False
        drop_orig = torch.zeros_like(drop).scatter(-1, order, drop)
        return logits.masked_fill(drop_orig, NEG)


class MinP:
    def __init__(self, p: float, min_tokens_to_keep: int = 1):
        self.p = p
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, logits, history):
        probs = logits.float().softmax(-1)
        remove = probs < self.p * probs.max(-1, keepdim=True).values
        return logits.masked_fill(_protect_top(remove, logits, self.min_tokens_to_keep), NEG)


class Typical:
    """Locally typical sampling ("Locally Typical Sampling", 2023): keep the tokens whose surprisal is closest
    to the distribution's entropy, in that order, until their mass reaches ``p``."""

    def __init__(self, p: float, min_tokens_to_keep: int = 1):
        self.p = p
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, logits, history):
        if self.p >= 1.0:
            return logits
        logp = logits.float().log_softmax(-1)
        probs = logp.exp()
        entropy = -(logp * probs).nansum(-1, keepdim=True)
        distance = (-logp - entropy).abs()
        sorted_distance, order = distance.sort(dim=-1)
        mass = probs.gather(-1, order).cumsum(-1)
        # the set is the shortest prefix (by distance) whose mass reaches p; ties at its edge stay in
        last = (mass < self.p).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)
        remove_sorted = sorted_distance > sorted_distance.gather(-1, last)
        remove_sorted[..., : self.min_tokens_to_keep] = False
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        return logits.masked_fill(remove, NEG)


class Epsilon:
    """Epsilon sampling ("Truncation Sampling as Language Model Desmoothing", 2022): drop tokens with probability below ``epsilon``."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        self.epsilon = epsilon
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, logits, history):
        remove = logits.float().softmax(-1) < self.epsilon
        return logits.masked_fill(_protect_at_least(remove, logits, self.min_tokens_to_keep), NEG)


class Eta:
    """Eta sampling ("Truncation Sampling as Language Model Desmoothing", 2022): drop tokens with probability below
    ``min(epsilon, sqrt(epsilon) * exp(-entropy))``."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        self.epsilon = epsilon
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, logits, history):
        logp = logits.float().log_softmax(-1)
        probs = logp.exp()
        entropy = -(probs * logp).nansum(-1, keepdim=True)
        eps = torch.tensor(self.epsilon, dtype=probs.dtype, device=probs.device)
        eta = torch.minimum(eps, eps.sqrt() * torch.exp(-entropy))
        remove = probs < eta
        return logits.masked_fill(_protect_at_least(remove, logits, self.min_tokens_to_keep), NEG)


class NoRepeatNGram:
    """Forbid any token that would complete an n-gram already present in prompt + generated text."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, logits, history):
        if history is None or history.numel() == 0:
            return logits
        n, V = self.n, logits.shape[-1]
        banned = torch.zeros(logits.shape, dtype=torch.bool)
        for b, row in enumerate(history.tolist()):
            seq = [t for t in row if t >= 0]  # drop the left padding
            if len(seq) < n:
                continue
            tail = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
            for i in range(len(seq) - n + 1):
                if tuple(seq[i:i + n - 1]) == tail and 0 <= seq[i + n - 1] < V:
                    banned[b, seq[i + n - 1]] = True
        return logits.masked_fill(banned.to(logits.device), NEG)


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
    return TopK(config.k, config.min_tokens_to_keep)


def build_top_p(config, ctx):
    return TopP(config.p, config.min_tokens_to_keep)


def build_min_p(config, ctx):
    return MinP(config.p, config.min_tokens_to_keep)


def build_typical(config, ctx):
    return Typical(config.p, config.min_tokens_to_keep)


def build_epsilon(config, ctx):
    return Epsilon(config.epsilon, config.min_tokens_to_keep)


def build_eta(config, ctx):
    return Eta(config.epsilon, config.min_tokens_to_keep)


def build_no_repeat_ngram(config, ctx):
    return NoRepeatNGram(config.n)


def build_repetition_penalty(config, ctx):
    return RepetitionPenalty(config.penalty)
