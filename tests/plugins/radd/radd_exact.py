"""A tiny data distribution whose clean-data conditionals are known exactly (by enumeration)."""

from __future__ import annotations

import itertools
import math

import torch


class ExactToy:
    """A random distribution p0 over ``{0..V-1}^L``; the mask token is ``V``."""

    def __init__(self, length: int = 3, vocab: int = 3, seed: int = 0, concentration: float = 0.5, p0=None):
        g = torch.Generator().manual_seed(seed)
        self.length, self.vocab, self.mask_id = length, vocab, vocab
        self.states = torch.tensor(list(itertools.product(range(vocab), repeat=length)))  # (V^L, L)
        if p0 is None:
            w = (-torch.log(torch.rand(len(self.states), generator=g, dtype=torch.float64))) ** (1 / concentration)
        else:
            w = torch.as_tensor(p0, dtype=torch.float64)
        self.p0 = w / w.sum()
        noisy = list(itertools.product(range(vocab + 1), repeat=length))
        self.noisy = torch.tensor(noisy)
        self._index = {tuple(x): i for i, x in enumerate(noisy)}
        self.table = self._conditionals()

    def index(self, x: torch.Tensor) -> torch.Tensor:
        base = torch.tensor([(self.vocab + 1) ** (self.length - 1 - i) for i in range(self.length)])
        return (x * base).sum(-1)

    def _conditionals(self) -> torch.Tensor:
        """(n_noisy, L, V+1) probabilities p0(x^i = y | unmasked tokens of x_t)."""
        out = torch.zeros(len(self.noisy), self.length, self.vocab + 1, dtype=torch.float64)
        for n, xt in enumerate(self.noisy):
            um = xt != self.mask_id
            consistent = (self.states[:, um] == xt[um]).all(-1)
            w = self.p0 * consistent
            w = w / w.sum()
            for i in range(self.length):
                for y in range(self.vocab):
                    out[n, i, y] = w[self.states[:, i] == y].sum()
        return out

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Exact conditional log-probabilities for a batch of noisy ids (B, L) -> (B, L, V+1)."""
        probs = self.table[self.index(x)]
        return torch.log(probs).float()

    def marginal(self, xt: torch.Tensor, sigma_bar: float) -> float:
        """p_t(x_t) of the absorbing forward process at cumulative noise sigma_bar."""
        keep = math.exp(-sigma_bar)
        is_mask = xt == self.mask_id
        per = torch.where(is_mask, torch.full(self.states.shape, 1 - keep, dtype=torch.float64),
                          torch.where(self.states == xt, torch.full(self.states.shape, keep, dtype=torch.float64),
                                      torch.zeros(self.states.shape, dtype=torch.float64)))
        return float((self.p0 * per.prod(-1)).sum())

    def log_p0(self, x0: torch.Tensor) -> float:
        idx = [i for i, s in enumerate(self.states.tolist()) if s == x0.tolist()][0]
        return float(torch.log(self.p0[idx]))
