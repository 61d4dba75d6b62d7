"""Plug-and-play attribute control: a logistic-regression classifier on the proposal space.

``LogisticAttribute`` holds ``w, b`` of ``p(y = 1 | z) = sigma(w.z + b)``; ``log_prob(z, y)`` is
``log p(y | z)`` and ``gradient(z, y)`` its analytic gradient ``w (y - sigma(w.z + b))`` (what
guidance adds; no autograd needed). ``fit`` fits it with scikit-learn on encoded embeddings;
``keyword_labels`` is the attribute of this implementation (the continuation contains a string)
and ``stdlib_continuations`` draws the texts to fit on from the standard library's sources.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F


class LogisticAttribute:
    """``p(y = 1 | z) = sigma(w.z + b)`` with its exact log-probability gradient."""

    def __init__(self, weight: torch.Tensor, bias: float):
        self.weight = torch.as_tensor(weight)
        self.bias = float(bias)

    def logit(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.to(z) + self.bias

    def probability(self, z: torch.Tensor) -> torch.Tensor:
        """(B,) ``p(y = 1 | z)``."""
        return torch.sigmoid(self.logit(z))

    def log_prob(self, z: torch.Tensor, y: int | torch.Tensor = 1) -> torch.Tensor:
        """(B,) ``log p(y | z) = y log sigma(a) + (1 - y) log sigma(-a)``, ``a = w.z + b``."""
        a = self.logit(z)
        return y * F.logsigmoid(a) + (1 - y) * F.logsigmoid(-a)

    def gradient(self, z: torch.Tensor, y: int | torch.Tensor = 1) -> torch.Tensor:
        """(B, D) ``d/dz log p(y | z) = w (y - sigma(w.z + b))``."""
        return (y - self.probability(z))[..., None] * self.weight.to(z)

    def guide(self, scale: float, y: int = 1):
        """The guidance of one clean prediction: ``z0_hat + scale * gradient(z0_hat, y)``."""
        return lambda z: z + scale * self.gradient(z, y)

    def accuracy(self, z: torch.Tensor, labels: torch.Tensor) -> float:
        return float(((self.probability(z) > 0.5).long() == labels.long()).double().mean())

    @classmethod
    def fit(cls, z: torch.Tensor, labels: torch.Tensor, C: float = 1.0) -> "LogisticAttribute":
        """Fit by scikit-learn's L2-regularised logistic regression (lbfgs) on (N, D) embeddings."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(labels.cpu().numpy(), dtype=np.int64)
        if len(set(y.tolist())) < 2:
            raise ValueError("the attribute's labels are all equal: a classifier needs examples of both classes")
        model = LogisticRegression(C=C, max_iter=2000).fit(z.detach().double().cpu().numpy(), y)
        return cls(torch.as_tensor(model.coef_[0], dtype=torch.float64), float(model.intercept_[0]))


def keyword_labels(texts, keyword: str) -> torch.Tensor:
    """(N,) 1 where the text contains ``keyword`` (bytes or str), else 0."""
    key = keyword.encode() if isinstance(keyword, str) else keyword
    return torch.tensor([int(key in (t if isinstance(t, bytes) else str(t).encode())) for t in texts], dtype=torch.long)


def stdlib_continuations(length: int, count: int, seed: int = 0) -> list[bytes]:
    """``count`` byte spans of ``length`` at random offsets of the standard library's ``.py`` files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "__pycache__" not in p.parts)
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < count:
        data = rng.choice(files).read_bytes()
        if len(data) <= length:
            continue
        start = rng.randrange(len(data) - length)
        out.append(data[start : start + length])
    return out
