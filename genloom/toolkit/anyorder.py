"""Any-order and insertion state: generation orders as permutations, and a canvas that grows by insertions.

Two families generate a sequence in an order other than left to right, and both need the same
small amount of bookkeeping, kept here once.

**Orders** (any-order autoregressive models: sigma-GPT, learned-order ARMs, marginalization
models). An order is a (B, N) long tensor ``order``: step ``t`` of row ``b`` generates position
``order[b, t]``. The *layout* of a sequence under an order is the sequence read in that order,
``layout[t] = x[order[t]]`` (:func:`permute`); :func:`unpermute` maps a layout back to positions
with the inverse permutation (:func:`inverse`). :func:`random_orders` draws uniform orders that keep
the first ``fixed`` positions in place (a prompt or a source block is read first, as given).
:func:`double_positions` gives, for every layout step, the position of the token it holds
(*current*) and the position generated next (*next*), sigma-GPT's two positional encodings, and
:class:`DoublePositionalEncoding` embeds them with two learnt tables. :func:`revealed_before`
says which positions a step has seen (the conditioning set of an any-order model).

**Insertion canvas** (insertion decoders: ILM, ENCONTER, Insertion Transformer). A canvas of
``n`` tokens has ``n + 1`` *slots* (slot ``i`` is the gap before token ``i``; slot ``n`` the end).
:class:`InsertionCanvas` holds one such canvas per row, inserts one or several tokens per slot in a
single parallel step (every slot index refers to the canvas before the step, so parallel
insertions never interfere), and can lock slots (ENCONTER's entity-span-aware inference forbids
slots inside an entity span). :func:`gap_counts` and :func:`gap_tokens` give the training targets of
an insertion model: for a sequence of which only ``keep`` survives, how many and which tokens are
missing in each slot of the surviving canvas. :func:`prefix_and_targets` splits a batch into the
fixed prefix (a source block) and the targets such decoders build.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core import kernels
from genloom.core.generation import Commit
from genloom.core.pattern import FULL

# -- orders ------------------------------------------------------------------------------------


def identity_orders(batch_size: int, length: int, device=None) -> torch.Tensor:
    """(B, N) the left-to-right order in every row."""
    return torch.arange(length, device=device).expand(batch_size, length).clone()


def random_orders(batch_size: int, length: int, *, fixed: int = 0, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B, N) uniform random orders of ``length`` positions whose first ``fixed`` steps are positions ``0 .. fixed-1``."""
    if not 0 <= fixed <= length:
        raise ValueError(f"fixed must be in [0, {length}], got {fixed}")
    keys = torch.rand(batch_size, length - fixed, generator=generator, device=generator.device if generator is not None else device)
    tail = keys.argsort(1).to(device) + fixed
    head = torch.arange(fixed, device=tail.device).expand(batch_size, fixed)
    return torch.cat([head, tail], 1)


def is_permutation(order: torch.Tensor) -> bool:
    """True when every row of ``order`` (B, N) holds each of ``0 .. N-1`` exactly once."""
    N = order.shape[-1]
    return bool((order.sort(-1).values == torch.arange(N, device=order.device)).all())


def inverse(order: torch.Tensor) -> torch.Tensor:
    """(B, N) the inverse permutation: ``inverse(order)[b, order[b, t]] = t`` (the step at which each position is generated)."""
    inv = torch.empty_like(order)
    inv.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return inv


def permute(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The layout of ``x`` (B, N, ...) under ``order`` (B, N): ``out[b, t] = x[b, order[b, t]]``."""
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return x.gather(1, index)


def unpermute(layout: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Back from a layout (B, N, ...) to positions: the inverse of :func:`permute`."""
    return permute(layout, inverse(order))


def double_positions(order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(current, next), each (B, N-1): layout step t holds position ``order[t]`` and predicts position ``order[t+1]``."""
    return order[:, :-1], order[:, 1:]


def revealed_before(order: torch.Tensor) -> torch.Tensor:
    """(B, N, N) bool: ``[b, t, i]`` is True when position i is generated at a step <= t (what step t conditions on)."""
    step = inverse(order)  # (B, N) step of each position
    t = torch.arange(order.shape[1], device=order.device)
    return step[:, None, :] <= t[None, :, None]


class DoublePositionalEncoding(nn.Module):
    """Two learnt absolute position tables: ``E_cur[current] + E_next[next]`` (sigma-GPT's input encoding).

    With the identity order (``current = t``, ``next = t + 1``) the sum is one fixed vector per
    step, i.e. an ordinary absolute positional encoding: the model is a plain left-to-right model.
    """

    def __init__(self, max_positions: int, d_model: int, init_std: float = 0.02):
        super().__init__()
        self.max_positions = max_positions
        self.current = nn.Embedding(max_positions, d_model)
        self.next = nn.Embedding(max_positions, d_model)
        nn.init.normal_(self.current.weight, std=init_std)
        nn.init.normal_(self.next.weight, std=init_std)

    def forward(self, current: torch.Tensor, next: torch.Tensor) -> torch.Tensor:
        top = int(torch.maximum(current.max(), next.max())) if current.numel() else 0
        if top >= self.max_positions:
            raise ValueError(f"position {top} is past max_positions={self.max_positions} of the double positional encoding")
        return self.current(current) + self.next(next)


# -- insertion canvas --------------------------------------------------------------------------


class InsertionCanvas:
    """One growing token canvas per row; tokens enter by insertion into slots.

    ``tokens[b]`` is row b's canvas (a list of ids), with ``len(tokens[b]) + 1`` slots. ``locked[b]``
    is a set of slot indices in which nothing may be inserted (tokens inserted next to a locked
    slot move it along, so a lock always stays between the same two tokens). ``steps`` counts the
    parallel insertion steps taken.
    """

    def __init__(self, rows):
        self.tokens: list[list[int]] = [list(r) for r in rows]
        self.locked: list[set[int]] = [set() for _ in self.tokens]
        self.steps = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def slots(self, b: int) -> int:
        return len(self.tokens[b]) + 1

    def open_slots(self, b: int) -> list[int]:
        """The slots of row b that accept an insertion."""
        return [s for s in range(self.slots(b)) if s not in self.locked[b]]

    def lock_inside(self, b: int, start: int, end: int) -> None:
        """Lock the slots strictly inside tokens ``start .. end-1`` of row b (keeps that span contiguous)."""
        self.locked[b].update(range(start + 1, end))

    def insert(self, b: int, insertions: dict[int, list[int]]) -> None:
        """One parallel step on row b: ``insertions[slot]`` (ids, in order) go into that slot of the canvas as it was before the step."""
        row = self.tokens[b]
        for s, ids in insertions.items():
            if not 0 <= s <= len(row):
                raise ValueError(f"slot {s} is out of range for a canvas of {len(row)} tokens (slots 0..{len(row)})")
            if s in self.locked[b] and ids:
                raise ValueError(f"slot {s} of row {b} is locked (it lies inside a span that must stay contiguous)")
        out, shift, moved = [], 0, set()
        for s in range(len(row) + 1):
            new = list(insertions.get(s, ()))
            if s in self.locked[b]:
                moved.add(s + shift)
            out.extend(new)
            shift += len(new)
            if s < len(row):
                out.append(row[s])
        self.tokens[b] = out
        self.locked[b] = moved

    def step(self, insertions: list[dict[int, list[int]]]) -> None:
        """One parallel insertion step on every row (``insertions[b]`` as in :meth:`insert`)."""
        for b, ins in enumerate(insertions):
            self.insert(b, ins)
        self.steps += 1

    def to_tensor(self, pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) right-padded ids and their validity."""
        return _right_padded(self.tokens, pad_id, device)

    def finished(self, eos_id: int | None, device=None) -> Commit:
        """The commit an insertion decoder makes once every row has ended: every canvas followed
        by ``eos_id`` (:meth:`genloom.core.generation.Commit.sequences`)."""
        return Commit.sequences(self.tokens, eos_id, device)


def _right_padded(rows: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    L = max((len(t) for t in rows), default=0)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    valid = torch.zeros(len(rows), L, dtype=torch.bool)
    for b, t in enumerate(rows):
        if t:
            ids[b, : len(t)] = torch.tensor(t)
            valid[b, : len(t)] = True
    return ids.to(device), valid.to(device)


def slot_states(model, prefix: torch.Tensor, canvases: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B, G, D) hidden state of every slot of every canvas, G = longest canvas + 1, from one pass.

    The layout is ``[prefix | canvas | padding]`` under full attention (padding invalid); slot ``k``
    of a canvas (the gap before its token ``k``) is read at layout position ``P - 1 + k``: the last
    prefix token stands for the first slot, each canvas token for the slot after it. Slots past a
    row's canvas are returned too; an insertion head masks them.
    """
    B, P = prefix.shape
    canvas, canvas_valid = _right_padded(canvases, pad_id, prefix.device)
    ids = torch.cat([prefix, canvas], 1)
    valid = torch.cat([torch.ones(B, P, dtype=torch.bool, device=prefix.device), canvas_valid], 1)
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        h = model.backbone(model.head.embed(ids), pattern=FULL, valid=valid)
    return h[:, P - 1 :]


def prefix_and_targets(batch: dict, source_length: int | None):
    """(prefix (B, P), the target ids of each row) of a batch, for decoders that build the target freely.

    On source-conditioned data (``SourceTargetPairs``) the prefix is the source block and a target
    is the row's target without its end-of-sequence id (its length is ``mask.sum() - 1``); on plain
    windows the prefix is the first token and the target the rest of the masked window.
    """
    ids = batch["ids"]
    if source_length:
        lengths = (batch["mask"].sum(1) - 1).tolist()
        return ids[:, :source_length], [ids[b, source_length : source_length + n].tolist() for b, n in enumerate(lengths)]
    mask = batch.get("mask")
    n = [int(mask[b].sum()) if mask is not None else ids.shape[1] - 1 for b in range(ids.shape[0])]
    return ids[:, :1], [ids[b, 1 : 1 + n[b]].tolist() for b in range(ids.shape[0])]


def gap_tokens(sequence, keep) -> list[list[int]]:
    """For a sequence of which the positions with ``keep[i]`` survive: the missing ids in each slot of the surviving canvas (``sum(keep) + 1`` lists)."""
    gaps: list[list[int]] = [[]]
    for token, k in zip(list(sequence), list(keep)):
        if k:
            gaps.append([])
        else:
            gaps[-1].append(int(token))
    return gaps


def gap_counts(keep: torch.Tensor) -> torch.Tensor:
    """(n_kept + 1,) how many tokens are missing in each slot of the canvas that ``keep`` (N,) leaves."""
    keep = keep.bool()
    slot = torch.cumsum(keep.long(), 0)  # a dropped token at i lies in the slot after the kept tokens before it
    counts = torch.zeros(int(keep.sum()) + 1, dtype=torch.long, device=keep.device)
    return counts.index_add_(0, slot[~keep], torch.ones_like(slot[~keep]))
