"""ADED's draft source: a tri-gram matrix of the target's own outputs, updated online.

``counts[(a, b)][c]`` counts how often the target emitted ``c`` after ``a, b`` (the prompt and every
committed token feed it); a context never seen backs off to the bi-gram row ``counts[b]``. Drafting
a node's children is a bandit choice over the row's candidates (PUCT, as in the paper's tree search):
``score(c) = p(c) * (1 + exploration * sqrt(N) / (1 + n_c))`` with ``p`` the row's empirical law,
``N`` how often the context was expanded and ``n_c`` how often ``c`` was drafted there, so a
candidate drafted often without being confirmed loses its bonus and others get tried.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict


class TrigramTable:
    """Tri-gram and bi-gram counts of a token stream, with draft visit counts for exploration."""

    def __init__(self, exploration: float = 0.5):
        self.exploration = exploration
        self.trigram: dict[tuple[int, int], Counter] = defaultdict(Counter)
        self.bigram: dict[int, Counter] = defaultdict(Counter)
        self.unigram: Counter = Counter()
        self.visits: dict[tuple, Counter] = defaultdict(Counter)
        self.updates = 0
        """Tokens counted so far (the table grows with every verified step)."""

    def update(self, tokens, start: int = 0) -> None:
        """Count the n-grams that end at ``tokens[i]`` for ``i >= start``."""
        for i in range(max(start, 0), len(tokens)):
            c = tokens[i]
            self.unigram[c] += 1
            if i >= 1:
                self.bigram[tokens[i - 1]][c] += 1
            if i >= 2:
                self.trigram[(tokens[i - 2], tokens[i - 1])][c] += 1
            self.updates += 1

    def row(self, a: int | None, b: int) -> tuple[Counter, tuple]:
        """The counts to draft from after ``a, b`` (tri-gram, else bi-gram, else unigram) and their key."""
        if a is not None and self.trigram.get((a, b)):
            return self.trigram[(a, b)], ("tri", a, b)
        if self.bigram.get(b):
            return self.bigram[b], ("bi", b)
        return self.unigram, ("uni",)

    def children(self, a: int | None, b: int, k: int) -> list[int]:
        """``k`` draft tokens after ``a, b`` by the PUCT score (ties: lower id); fewer candidates are repeated."""
        row, key = self.row(a, b)
        if not row:
            return [b] * k
        total = sum(row.values())
        visits = self.visits[key]
        n = sum(visits.values())
        scored = sorted(row, key=lambda c: (-(row[c] / total) * (1 + self.exploration * math.sqrt(n) / (1 + visits[c])), c))
        chosen = scored[:k]
        for c in chosen:
            visits[c] += 1
        return (chosen * k)[:k] if len(chosen) < k else chosen
