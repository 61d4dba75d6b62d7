"""Gold edit labels of a (source, target) pair and their realization (the exact inverse).

An edit of a source ``s`` (n tokens) into a target ``t`` is

- ``keep``: one flag per source position (the tagging task: keep or delete);
- ``order``: the kept source positions in the order they appear in the target (the pointer task:
  a permutation of the kept positions);
- ``insertions``: ``{slot: [tokens]}``, the target tokens that no source token supplies, by the
  slot they go to: slot 0 is the start of the output, slot ``p + 1`` is right after the kept source
  token at position ``p`` (the insertion task).

:func:`realize` rebuilds the target: ``insertions[0]``, then for each ``p`` in ``order`` the token
``s[p]`` followed by ``insertions[p + 1]``.

:func:`derive_edits` finds the labels by **greedy string tiling**: repeatedly take the longest
common run of consecutive tokens between the target and the source whose tokens are both still
unmatched (ties: leftmost in the target, then leftmost in the source), mark it matched, and stop
when the longest run is shorter than ``min_span``. Matched source tokens are kept (in the order of
their target positions), every other source token is deleted, and every unmatched target token is
an insertion into the slot after the last matched target token before it (slot 0 when none). Any
pair gets labels, and realization reproduces the target exactly whatever the tiling chose: each
kept token is copied from a source position holding the same id. Long runs first keep words
together, so the pointer mostly says "the next source token" and jumps only between moved spans;
``min_span > 1`` leaves short coincidental matches (a letter of an inserted word that also occurs
in a deleted one) as insertions.

The insertion decoder's sequence (:func:`insertion_sequence`): for each non-empty slot, in output
order, the slot's marker then its tokens; then one end marker. Its length, the number of
autoregressive steps, is ``#inserted tokens + #non-empty slots + 1`` (:func:`insertion_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True)
class Edits:
    """Keep/delete tags, the pointer order of the kept tokens and the insertions by slot."""

    keep: tuple[bool, ...]
    order: tuple[int, ...]
    insertions: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def inserted(self) -> int:
        return sum(len(v) for v in self.insertions.values())

    def successors(self) -> dict[int, int]:
        """The pointer targets: ``-1`` (start) -> first kept position, each kept position -> the next
        (the last kept position has none)."""
        chain = (-1,) + self.order
        return {a: b for a, b in zip(chain[:-1], chain[1:])}


def tile(source, target, min_span: int = 1) -> list[int | None]:
    """Greedy string tiling: for each target position, the source position it is copied from, or None."""
    if min_span < 1:
        raise ValueError(f"min_span must be >= 1, got {min_span}")
    s, t = list(source), list(target)
    used = [False] * len(s)
    src_of: list[int | None] = [None] * len(t)
    while True:
        best = (0, 0, 0)  # (length, target start, source start)
        for i in range(len(t)):
            if src_of[i] is not None:
                continue
            for j in range(len(s)):
                n = 0
                while i + n < len(t) and j + n < len(s) and src_of[i + n] is None and not used[j + n] and t[i + n] == s[j + n]:
                    n += 1
                if n > best[0]:
                    best = (n, i, j)
        n, i, j = best
        if n < min_span or n == 0:
            return src_of
        for k in range(n):
            src_of[i + k] = j + k
            used[j + k] = True


@lru_cache(maxsize=200_000)
def _derive(source: tuple[int, ...], target: tuple[int, ...], min_span: int) -> Edits:
    src_of = tile(source, target, min_span)
    keep = [False] * len(source)
    order: list[int] = []
    insertions: dict[int, list[int]] = {}
    slot = 0
    for tok, p in zip(target, src_of):
        if p is None:
            insertions.setdefault(slot, []).append(tok)
        else:
            keep[p] = True
            order.append(p)
            slot = p + 1
    return Edits(tuple(keep), tuple(order), {k: tuple(v) for k, v in insertions.items()})


def derive_edits(source, target, min_span: int = 1) -> Edits:
    """The gold :class:`Edits` turning ``source`` into ``target`` (module docstring; cached)."""
    return _derive(tuple(int(x) for x in source), tuple(int(x) for x in target), int(min_span))


def realize(source, keep, order, insertions) -> list[int]:
    """The output of an edit: ``insertions[0]``, then each kept token in ``order`` followed by its
    slot's insertions. Raises ``ValueError`` when ``order`` is not a permutation of the kept
    positions or an insertion names a slot that is neither the start nor after a kept token."""
    source = list(source)
    kept = {p for p, k in enumerate(keep) if k}
    if sorted(order) != sorted(kept) or len(set(order)) != len(order):
        raise ValueError(f"order {list(order)} is not a permutation of the kept positions {sorted(kept)}")
    bad = [s for s in insertions if s != 0 and s - 1 not in kept]
    if bad:
        raise ValueError(f"insertions into slots {bad} that follow no kept token")
    out = list(insertions.get(0, ()))
    for p in order:
        out.append(source[p])
        out.extend(insertions.get(p + 1, ()))
    return out


def insertion_sequence(edits: Edits, slot_id: int, end_id: int) -> list[int]:
    """The insertion decoder's target: ``[marker(slot), tokens...]`` per non-empty slot in output
    order, then ``end_id``; the marker of slot ``k`` is the id ``slot_id + k``."""
    out: list[int] = []
    for slot in [0] + [p + 1 for p in edits.order]:
        tokens = edits.insertions.get(slot)
        if tokens:
            out.append(slot_id + slot)
            out.extend(tokens)
    return out + [end_id]


def parse_insertions(sequence, slot_id: int, n_slots: int, end_id: int) -> dict[int, tuple[int, ...]]:
    """The inverse of :func:`insertion_sequence`: ``{slot: tokens}`` up to the first ``end_id``.
    Tokens before any marker go to slot 0."""
    out: dict[int, list[int]] = {}
    slot = 0
    for tok in sequence:
        tok = int(tok)
        if tok == end_id:
            break
        if slot_id <= tok < slot_id + n_slots:
            slot = tok - slot_id
            out.setdefault(slot, [])
        else:
            out.setdefault(slot, []).append(tok)
    return {k: tuple(v) for k, v in out.items() if v}


def insertion_steps(edits: Edits) -> int:
    """Autoregressive steps of the insertion decoder: inserted tokens + one marker per non-empty
    slot + the end marker."""
    return edits.inserted + sum(1 for v in edits.insertions.values() if v) + 1
