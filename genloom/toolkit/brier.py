"""BrierLM: likelihood-free evaluation of a language model from two samples per context.

The Brier score of a predictive distribution ``p`` over outcomes against the observed outcome
``y`` is ``Brier(p, y) = 1 - 2 p_y + ||p||^2`` (lower is better); it is strictly proper, so the
expected score is minimised exactly by the true law. A model that can only be *sampled* (an
implicit, continuous-latent generator such as CALM's energy head) cannot report ``p_y``, but two
independent samples ``x1, x2 ~ p`` give an unbiased estimate of the score's informative part:

    E[ 1[x1 = y] + 1[x2 = y] - 1[x1 = x2] ] = 2 p_y - ||p||^2,                  (CALM, Sec. 5)

since ``P(x1 = y) = p_y`` and ``P(x1 = x2) = sum_x p_x^2``. The estimate equals
``1 - Brier(p, y)`` in expectation (higher is better). **Brier-n** applies it to the outcome
"the next n tokens" (an n-gram compared as a whole), and **BrierLM** is 100 times the geometric
mean of Brier-1 .. Brier-4 (CALM, Eq. 16).

- :func:`brier_estimate` -- the per-context two-sample estimate for outcomes of any shape;
- :func:`brier_ngram_estimates` -- Brier-1..n of two sampled n-token continuations at once;
- :func:`brier_closed_form` -- ``2 p_y - ||p||^2`` for a known categorical (the estimator's mean);
- :func:`brier_lm` -- the aggregate from mean Brier-n figures;
- :func:`autoregressive_brier` -- Brier-1..n of a next-token model at given context positions,
  drawing two continuations with its KV cache (the token-level baseline a chunk model is
  compared with).
"""

from __future__ import annotations

import math

import torch


def brier_estimate(x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor, dims: int = 0) -> torch.Tensor:
    """Two-sample estimate ``1[x1=y] + 1[x2=y] - 1[x1=x2]`` per context.

    ``x1``, ``x2``, ``y`` share a shape; the trailing ``dims`` dimensions form one outcome (an
    n-gram: ``dims=1``), compared as a whole. Returns a float64 tensor over the leading dims.
    """
    if not (x1.shape == x2.shape == y.shape):
        raise ValueError(f"x1, x2 and y must share a shape, got {tuple(x1.shape)}, {tuple(x2.shape)}, {tuple(y.shape)}")

    def same(a, b):
        eq = a == b
        for _ in range(dims):
            eq = eq.all(-1)
        return eq.double()

    return same(x1, y) + same(x2, y) - same(x1, x2)


def brier_ngram_estimates(x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Brier-1..n estimates of (..., n) sampled continuations against the (..., n) truth.

    Entry ``[..., m-1]`` compares the first ``m`` tokens as one outcome: (..., n) float64.
    """
    n = y.shape[-1]
    return torch.stack([brier_estimate(x1[..., :m], x2[..., :m], y[..., :m], dims=1) for m in range(1, n + 1)], -1)


def brier_closed_form(probs: torch.Tensor, y: int) -> float:
    """``2 p_y - ||p||^2``: the mean of :func:`brier_estimate` under ``x1, x2 ~ probs`` i.i.d."""
    probs = probs.double()
    return float(2 * probs[y] - (probs * probs).sum())


def brier_lm(brier_n) -> float:
    """BrierLM = 100 * geometric mean of the mean Brier-1..n figures (n = 4 in the paper).

    A non-positive mean (possible for the estimator on a poor model) makes the geometric mean
    undefined; it is reported as 0, the floor of a useless model.
    """
    values = [float(v) for v in brier_n]
    if not values:
        raise ValueError("brier_lm needs at least one Brier-n figure")
    if min(values) <= 0:
        return 0.0
    return 100.0 * math.exp(sum(math.log(v) for v in values) / len(values))


@torch.no_grad()
def autoregressive_brier(model, ids: torch.Tensor, positions, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brier-1..n of a next-token ``model`` (a :class:`~genloom.core.model.GenerativeModel` with a
    categorical head) on ``ids`` (B, T), at the context lengths ``positions`` (each c >= 1 with
    c + n <= T: the context is ``ids[:, :c]``, the truth ``ids[:, c:c+n]``).

    For every context, two n-token continuations are sampled ancestrally (temperature 1, no
    processors) with the model's KV cache (the prefix is encoded once and the cache snapshot is
    restored for the second sample). Returns (B, len(positions), n) float64 estimates.
    """
    out = []
    for c in positions:
        c = int(c)
        if c < 1 or c + n > ids.shape[1]:
            raise ValueError(f"context length {c} leaves no room for {n} true tokens in a sequence of {ids.shape[1]}")
        state = model.init_state(ids.shape[0], c + n + 1)
        last = model(ids[:, :c], state=state)[:, -1]
        snap = state.snapshot()
        samples = []
        for draw in range(2):
            if draw:
                state.restore(snap)
            logits, tokens = last, []
            for j in range(n):
                token = model.head.sample(logits, generator)
                tokens.append(token)
                if j + 1 < n:
                    logits = model(token[:, None], state=state)[:, -1]
            samples.append(torch.stack(tokens, 1))
        out.append(brier_ngram_estimates(samples[0], samples[1], ids[:, c : c + n]))
    return torch.stack(out, 1)
