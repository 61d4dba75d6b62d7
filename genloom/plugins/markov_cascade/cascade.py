"""Cascaded decoding of an order-m CRF: max-marginals by a log-depth (max, +) scan, pruning, Viterbi.

Stage k (k = 1 .. m) works on a lattice whose states at position t are k-grams
``(x_{t-k+1} .. x_t)`` (positions <= 0 are the prompt's tokens, fixed). An edge joins a state at
t - 1 to a state at t when they overlap (the last k - 1 tokens of one are the first k - 1 of the
other); its score is the order-k log-probability ``log p_k(x_t | x_{t-k} .. x_{t-1})`` -- the
model fed the k-token context that is the state at t - 1. A path's score is the order-k CRF's
score of the sequence, and with k = m, for a Markov transformer of order m, the sequence's
log-probability under the model.

Per stage: the max-marginal of every state (the best score of a path through it) comes from a
prefix and a suffix (max, +) scan over the edge matrices, each ``ceil(log2 L)`` levels deep
(Hillis-Steele), or from the sequential max-product passes for lattices too wide for the scan's
n^3 products; states outside the ``max_states`` best max-marginals of their position are
pruned; the surviving edges become the next stage's (k+1)-gram states. The last stage returns its
Viterbi path. The path a stage would decode has the highest max-marginal at every position, so
its own pruning never removes it; with no pruning the last stage is exact Viterbi of the order-m CRF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

NEG = float("-inf")

#: ``score(contexts (N, k) ids, valid (N, k)) -> (N, V) log-probabilities of the next token``.
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def tropical_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(max, +) product of (..., n, p) and (..., p, q)."""
    return (a[..., :, :, None] + b[..., None, :, :]).amax(-2)


def prefix_scan(mats: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Inclusive (max, +) prefix products of (L, n, n) matrices in ``ceil(log2 L)`` levels
    (Hillis-Steele); returns the products and the number of levels (the scan's depth)."""
    out, step, depth = mats.clone(), 1, 0
    L = mats.shape[0]
    while step < L:
        out = torch.cat([out[:step], tropical_matmul(out[:-step], out[step:])])
        step, depth = step * 2, depth + 1
    return out, depth


@dataclass
class Lattice:
    """One stage: ``states[t]`` (n_t, k) k-grams ending at position t (t = 0 is the prompt's single
    state), ``edges[t - 1]`` (n_{t-1}, n_t) edge scores into position t (-inf: no edge)."""

    states: list[torch.Tensor]
    edges: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.states) - 1


def score_edges(lattice: Lattice, score: Scorer) -> None:
    """Fill ``lattice.edges`` with the order-k scores (one batched model call for the stage)."""
    contexts = torch.cat(lattice.states[:-1])  # the state at t - 1 is the context of position t
    valid = contexts >= 0
    logp = score(contexts.clamp_min(0), valid)
    edges, start = [], 0
    for t in range(1, len(lattice.states)):
        prev, cur = lattice.states[t - 1], lattice.states[t]
        lp = logp[start:start + prev.shape[0]]
        start += prev.shape[0]
        e = lp[:, cur[:, -1]]  # (n_{t-1}, n_t): log p(x_t | context)
        if cur.shape[1] > 1:
            fits = (prev[:, None, 1:] == cur[None, :, :-1]).all(-1)
            e = e.masked_fill(~fits, NEG)
        edges.append(e)
    lattice.edges = edges


def _padded(edges: list[torch.Tensor]) -> torch.Tensor:
    n = max(max(e.shape) for e in edges)
    out = torch.full((len(edges), n, n), NEG, dtype=edges[0].dtype, device=edges[0].device)
    for i, e in enumerate(edges):
        out[i, : e.shape[0], : e.shape[1]] = e
    return out


def max_marginals(lattice: Lattice, parallel: bool = True) -> tuple[list[torch.Tensor], int]:
    """The max-marginal of every state at positions 1..L, and the depth of the computation.

    ``parallel``: prefix and suffix (max, +) scans over the (padded, n x n) edge matrices,
    ``ceil(log2 L)`` levels deep but O(L log L n^3) work; otherwise the sequential max-product
    forward and backward passes (depth L, O(L n^2) work: what a large vocabulary needs)."""
    L = lattice.length
    if not parallel:
        alpha, alphas = torch.zeros(1, dtype=lattice.edges[0].dtype, device=lattice.edges[0].device), []
        for e in lattice.edges:
            alpha = (alpha[:, None] + e).amax(0)
            alphas.append(alpha)
        beta = torch.zeros_like(alphas[-1])
        out = [None] * L
        out[-1] = alphas[-1] + beta
        for t in range(L - 1, 0, -1):
            beta = (lattice.edges[t] + beta[None]).amax(1)
            out[t - 1] = alphas[t - 1] + beta
        return out, L
    mats = _padded(lattice.edges)  # (L, n, n)
    forward, depth = prefix_scan(mats)  # forward[t-1][0, j]: best score from the prompt to state j at t
    backward, _ = prefix_scan(mats.flip(0).transpose(1, 2))  # suffix products, transposed
    out = []
    for t in range(1, L + 1):
        n = lattice.states[t].shape[0]
        alpha = forward[t - 1][0, :n]
        beta = backward[L - t - 1].amax(0)[:n] if t < L else torch.zeros(n, dtype=alpha.dtype, device=alpha.device)
        out.append(alpha + beta)
    return out, depth


def viterbi(lattice: Lattice) -> tuple[list[int], float]:
    """The best path's state index at positions 1..L and its score (back-pointers)."""
    alpha = torch.zeros(1, dtype=lattice.edges[0].dtype, device=lattice.edges[0].device)
    back = []
    for e in lattice.edges:
        scores = alpha[:, None] + e
        alpha, arg = scores.max(0)
        back.append(arg)
    best = int(alpha.argmax())
    path = [best]
    for arg in reversed(back[1:]):
        path.append(int(arg[path[-1]]))
    return path[::-1], float(alpha[best])


def prune(lattice: Lattice, marginals: list[torch.Tensor], max_states: int | None) -> list[torch.Tensor]:
    """The indices of the states kept at positions 1..L: the ``max_states`` best max-marginals."""
    keep = []
    for mm in marginals:
        if max_states is None or mm.numel() <= max_states:
            keep.append(torch.arange(mm.numel(), device=mm.device))
        else:
            keep.append(mm.topk(max_states).indices.sort().values)
    return keep


def next_stage(lattice: Lattice, keep: list[torch.Tensor]) -> Lattice:
    """The (k+1)-gram lattice: the surviving edges of this one (both ends kept, finite score)."""
    states = [torch.cat([lattice.states[0][:, :1].new_full((1, 1), -1), lattice.states[0]], 1)]
    kept = [torch.arange(lattice.states[0].shape[0], device=lattice.states[0].device)] + keep
    for t in range(1, lattice.length + 1):
        prev, cur = lattice.states[t - 1][kept[t - 1]], lattice.states[t][kept[t]]
        e = lattice.edges[t - 1][kept[t - 1]][:, kept[t]]
        i, j = torch.isfinite(e).nonzero(as_tuple=True)
        states.append(torch.cat([prev[i, :1], cur[j]], 1))
    return Lattice(states)


@dataclass
class CascadeResult:
    tokens: list[int]
    score: float
    stages: list[dict]
    """Per stage: its order, states per position (before pruning), the scan depth, and the stage's
    own Viterbi path (state tuples) with whether pruning kept it."""


def first_lattice(context: list[int], vocab_size: int, length: int, device=None) -> Lattice:
    """Stage 1: every token at every position after the prompt's last token."""
    start = torch.tensor([[context[-1] if context else -1]], device=device)
    every = torch.arange(vocab_size, device=device)[:, None]
    return Lattice([start] + [every] * length)


def cascade(score_for_order: Callable[[int], Scorer], context: list[int], vocab_size: int, length: int, order: int,
            max_states: int | None, device=None, parallel: bool = True) -> CascadeResult:
    """Decode ``length`` tokens after ``context`` by the cascade of stages 1..``order``.

    ``score_for_order(k)`` gives the order-k scorer; ``max_states`` states per position survive
    each stage but the last (None: no pruning, the last stage is exact Viterbi of the order CRF);
    ``parallel`` chooses the log-depth scans for the max-marginals (see :func:`max_marginals`).
    """
    lattice = first_lattice(context, vocab_size, length, device)
    # the prompt's state holds its last k tokens at stage k (-1 where the prompt is shorter)
    stages = []
    for k in range(1, order + 1):
        if k > 1:
            lattice.states[0] = torch.tensor([[-1] * max(0, k - len(context)) + list(context[-k:])], device=device)
        score_edges(lattice, score_for_order(k))
        marginals, depth = max_marginals(lattice, parallel) if k < order else (None, 0)
        path, best = viterbi(lattice)
        info = {"order": k, "states": [int(s.shape[0]) for s in lattice.states[1:]], "scan_depth": depth, "score": best,
                "path": [tuple(lattice.states[t + 1][i].tolist()) for t, i in enumerate(path)]}
        if k == order:
            stages.append(info)
            tokens = [int(lattice.states[t + 1][i, -1]) for t, i in enumerate(path)]
            return CascadeResult(tokens, best, stages)
        keep = prune(lattice, marginals, max_states)
        info["path_kept"] = all(bool((keep[t] == i).any()) for t, i in enumerate(path))
        stages.append(info)
        lattice = next_stage(lattice, keep)
    raise ValueError(f"order must be at least 1, got {order}")


def depth_bound(length: int) -> int:
    return math.ceil(math.log2(length)) if length > 1 else 0
