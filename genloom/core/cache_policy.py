"""KV-cache policies: what a cache keeps, what attention reads, under a budget.

A :class:`CachePolicy` manages a :class:`ManagedKVCache`, the core :class:`~genloom.core.state.KVCache`
contract (``begin``/``update``/``read``, ``reorder``, ``rollback``, ``keep``, ``snapshot``/``restore``)
with entries held per layer instead of in preallocated columns, so that what a policy drops is memory
given back (:attr:`~genloom.core.state.KVCache.nbytes` counts the storage actually held). Per layer and
advance, in ``update(layer, k, v, q=...)``:

1. **evict / compress** -- :meth:`CachePolicy.evict` sees the entries the layer holds from earlier
   advances and the incoming chunk's queries; it returns a (B, S) keep mask (the cache compacts the
   kept entries, order kept) or a replacement :class:`Entries` (merged or quantised entries), or None;
2. the chunk's own keys/values are appended: the tokens of the most recent advance are always held,
   which is what keeps ``rollback`` within that advance and ``keep`` exact under any policy;
3. **retrieve** -- :meth:`CachePolicy.retrieve` may pick the subset of held entries this chunk's
   queries attend to (a (B, S) mask; the chunk itself is always included). ``update`` returns that
   subset, so every attention backend honours it without knowing about policies.

A selection is per sequence and layer, shared by the layer's key/value heads. A policy keeps any
state of its own in the cache, never in itself (one policy object serves every cache of a model):
per-entry tensors in ``Entries.extra`` (gathered, reordered and dropped with the entries) and per-row
tensors in ``cache.rows[layer]`` (reordered with the batch, snapshotted with the cache); replace those
tensors rather than changing them in place, so a snapshot stays valid.

A policy's :attr:`CachePolicy.storage_dtype` (None: the model's dtype) is the dtype the entries are
held in; attention reads them back in the model's dtype (narrower storage is an approximation,
counted in ``layer_nbytes()`` at its own width).

Budgets are tokens per sequence and layer (``budget``) or bytes for the whole cache of one sequence
(``budget_bytes``, turned into tokens from the layer's entry size); :meth:`ManagedKVCache.room` tells
a policy how many earlier entries may stay so that, after the advance, the layer holds at most
``max(budget, tokens of the advance)`` entries.

Policies are components of the ``cache_policy`` kind (declared by the baseline plugin, registered
through ``genloom_components``), named by the config's top-level ``cache_policy`` node; see
docs/hooks.md and docs/plugin-guide.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genloom.core.state import KVCache, as_lengths, check_kv_source, storage_bytes

#: Operations of the cache contract a policy may refuse (:attr:`CachePolicy.refuses`).
OPERATIONS = ("reorder", "rollback", "keep", "snapshot")


@dataclass
class Entries:
    """What one layer holds: keys/values (B, H, S, Dh), positions and validity (B, S), and the
    policy's per-entry annotations (each (B, S, ...), moved with the entries)."""

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.k.shape[2]

    def select(self, keep: torch.Tensor) -> "Entries":
        """The entries flagged in ``keep`` (B, S), moved to the front of each row in order; rows
        keeping fewer than the widest row are padded with invalid entries."""
        keep = keep.to(torch.bool) & self.valid
        count = keep.long().sum(1)
        width = int(count.max()) if count.numel() else 0
        if width == self.size and bool(keep.all()):
            return self
        order = torch.sort((~keep).int(), dim=1, stable=True).indices[:, :width]
        valid = torch.arange(width, device=keep.device)[None] < count[:, None]
        return Entries(_gather_kv(self.k, order), _gather_kv(self.v, order), self.pos.gather(1, order).masked_fill(~valid, 0), valid,
                       {n: _gather_rows(t, order) for n, t in self.extra.items()})


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` as integers of its width where gather/index_select lack a kernel for its dtype (float8)."""
    return t.view(torch.uint8) if t.is_floating_point() and t.element_size() == 1 else t


def _gather_kv(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return _bits(t).gather(2, order[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])).view(t.dtype)


def _gather_rows(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return t.gather(1, order.view(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))


class CachePolicy:
    """Decides what a :class:`ManagedKVCache` keeps and what attention reads. Subclass and override
    :meth:`evict` and/or :meth:`retrieve`; the defaults keep and read everything (the full cache)."""

    name: str = "full"
    budget: int | None = None
    """Tokens per sequence and layer the cache may hold (None: unlimited)."""
    budget_bytes: int | None = None
    """Bytes the keys/values of one sequence may take, all layers together (None: unlimited)."""
    refuses: frozenset = frozenset()
    """Operations of :data:`OPERATIONS` the policy cannot support: the cache raises a ``ValueError``
    naming the policy when a decoder asks for one (e.g. a policy whose state cannot be rolled back)."""
    storage_dtype: torch.dtype | None = None
    """The dtype the cache stores keys/values in (None: the model's); attention reads them converted
    back to the model's dtype. A narrower dtype is memory given back at every token held (and an
    approximation: only None keeps the cache exact)."""
    static: bool = False
    """True when the policy keeps every entry and reads all of them, so the fixed-shape static cache
    (``generate.cache: static``) may stand in for the managed one."""

    def evict(self, cache: "ManagedKVCache", layer: int, held: Entries, q: torch.Tensor | None):
        """Before ``layer`` appends the current chunk: which of the entries it ``held`` from earlier
        advances stay. Return None (all stay), a (B, S) bool keep mask, or a replacement
        :class:`Entries` (compressed entries). ``q`` is the chunk's queries (B, Hq, L, Dh), after
        positional encoding, or None when the backbone does not pass them."""
        return None

    def retrieve(self, cache: "ManagedKVCache", layer: int, held: Entries, q: torch.Tensor | None):
        """Which held entries (the current chunk included, at the end) the chunk's queries attend
        to: None (all) or a (B, S) bool mask; the chunk's own entries are added by the cache."""
        return None

    def __repr__(self) -> str:
        limits = [f"budget={self.budget}"] if self.budget is not None else []
        limits += [f"budget_bytes={self.budget_bytes}"] if self.budget_bytes is not None else []
        return f"{type(self).__name__}({', '.join(limits) or 'unlimited'})"


class FullPolicy(CachePolicy):
    """Keep everything, read everything: the cache every backbone had before policies."""

    static = True


class ManagedKVCache(KVCache):
    """A :class:`~genloom.core.state.KVCache` whose entries are held per layer and managed by a :class:`CachePolicy`.

    Every layer holds its own keys/values (B, H, S_layer, Dh), positions and validity: after a policy
    evicts, layers hold different entries and nothing keeps the dropped ones' memory. The methods of
    the contract work on those per-layer entries; ``rollback`` within the most recent advance, ``keep``
    and ``snapshot``/``restore`` are exact under any policy (the current advance is never evicted, and
    held tensors are replaced, never changed in place). A rollback further back forgets the rolled-back
    tokens; entries the policy evicted earlier stay evicted.
    """

    rollback_any = True

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, capacity: int = 256, *, device=None,
                 dtype=torch.float32, kv_source=None, policy: CachePolicy | None = None):
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.policy = policy if policy is not None else FullPolicy()
        self.kv_source = check_kv_source(kv_source, n_layers)
        self.layer_skip = None
        self.router = None
        self._advances = 0
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self.entries: list[Entries | None] = [self._empty(dtype) if self.kv_source[i] == i else None for i in range(n_layers)]
        self.rows: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
        """Per-row policy state of each layer (each tensor (B, ...)), reordered and snapshotted with the cache."""
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=self._device)
        self._chunk: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last: int | None = 0  # tokens of the most recent advance (the tail of every layer); None after a rollback
        self._compute_dtype = dtype  # the model's dtype, which attention reads entries back in (CachePolicy.storage_dtype)
        self.stats = {"evicted": 0, "retrieved_steps": 0, "read": 0, "reads": 0}
        """Counts a benchmark or a policy reads: entries evicted, layer-steps that attended a retrieved
        subset, entries attended in all (``read``) over ``reads`` layer-advances."""

    def _empty(self, dtype) -> Entries:
        B, H, Dh, d = self.batch_size, self.n_kv_heads, self.head_dim, self._device
        return Entries(torch.zeros(B, H, 0, Dh, device=d, dtype=dtype), torch.zeros(B, H, 0, Dh, device=d, dtype=dtype),
                       torch.zeros(B, 0, dtype=torch.long, device=d), torch.zeros(B, 0, dtype=torch.bool, device=d))

    def _refuse(self, op: str) -> None:
        if op in self.policy.refuses:
            raise ValueError(f"cache policy '{self.policy.name}' does not support {op}() (it refuses: {', '.join(sorted(self.policy.refuses))}); "
                             f"use a decoder that does not need it, or another cache_policy")

    # -- views the KVCache contract exposes ------------------------------------------------------
    @property
    def device(self):
        return self._device

    @property
    def k(self) -> list[torch.Tensor]:
        return [self.entries[s].k for s in self.kv_source]

    @property
    def v(self) -> list[torch.Tensor]:
        return [self.entries[s].v for s in self.kv_source]

    @property
    def capacity(self) -> int:
        return max(self.entries[i].size for i in self.owners())

    @property
    def used(self) -> int:
        return self.capacity

    @property
    def chunk(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Positions and validity (B, L) of the current advance's tokens (the queries a policy sees)."""
        return self._chunk

    def annotate(self, layer: int, **extra: torch.Tensor) -> Entries:
        """Set per-entry tensors (each (B, S_layer, ...)) on the entries ``layer`` reads (its source's,
        for a layer that shares), replacing the :class:`Entries` rather than changing it, so that a
        snapshot stays valid; returns the new entries."""
        owner = self.kv_source[layer]
        e = self.entries[owner]
        self.entries[owner] = Entries(e.k, e.v, e.pos, e.valid, {**e.extra, **extra})
        return self.entries[owner]

    def held(self, layer: int) -> Entries:
        """The entries ``layer`` reads (its source's, for a layer that shares)."""
        return self.entries[self.kv_source[layer]]

    def _relink(self) -> None:
        pass  # reading layers look their source up through kv_source

    def _tensors(self) -> list[torch.Tensor]:
        out = [self._lengths]
        for i in self.owners():
            e = self.entries[i]
            out += [e.k, e.v, e.pos, e.valid, *e.extra.values(), *self.rows[i].values()]
        return out

    def layer_nbytes(self) -> list[int]:
        return [storage_bytes([self.entries[i].k, self.entries[i].v]) if self.kv_source[i] == i else 0 for i in range(self.n_layers)]

    def _drop_layer(self, layer: int) -> None:
        self.entries[layer] = self._empty(self.entries[layer].k.dtype)

    def room(self, layer: int, incoming: int | None = None) -> int | None:
        """How many entries from earlier advances ``layer`` may keep when ``incoming`` tokens arrive
        (default: the current advance's), so that it then holds at most ``max(budget, incoming)``;
        None when the policy sets no budget."""
        incoming = self._last if incoming is None else incoming
        limits = []
        if self.policy.budget is not None:
            limits.append(self.policy.budget)
        if self.policy.budget_bytes is not None:
            e = self.entries[layer]
            per_token = 2 * self.n_kv_heads * self.head_dim * e.k.element_size() * len(self.owners())
            limits.append(self.policy.budget_bytes // per_token)
        if not limits:
            return None
        return max(min(limits) - (incoming or 0), 0)

    # -- advancing --------------------------------------------------------------------------------
    def begin(self, valid: torch.Tensor | None, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if valid is None:
            valid = torch.ones(self.batch_size, length, dtype=torch.bool, device=self.device)
        valid = valid.to(self.device, torch.bool)
        positions = (self._lengths[:, None] + valid.long().cumsum(1) - 1).clamp_min(0)
        self._chunk = (positions, valid)
        self._advances += 1
        self._last = valid.shape[1]
        self._lengths = self._lengths + valid.long().sum(1)
        return positions, valid

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, *, q: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        if self.shares(layer):
            raise ValueError(f"layer {layer} reads layer {self.kv_source[layer]}'s keys/values (kv_source): call read(), not update()")
        positions, valid = self._chunk
        held = self.entries[layer]
        self._compute_dtype = k.dtype
        storage = self.policy.storage_dtype or k.dtype
        if held.k.dtype != storage:
            held = Entries(held.k.to(storage), held.v.to(storage), held.pos, held.valid, held.extra)
        if rows is not None:  # layer routing: the other rows skip this layer and write nothing
            full_k = k.new_zeros(self.batch_size, *k.shape[1:])
            full_v = v.new_zeros(self.batch_size, *v.shape[1:])
            full_k[rows], full_v[rows] = k, v
            k, v = full_k, full_v
            on = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
            on[rows] = True
            valid = valid & on[:, None]
            if q is not None:
                full_q = q.new_zeros(self.batch_size, *q.shape[1:])
                full_q[rows] = q
                q = full_q
        decision = self.policy.evict(self, layer, held, q) if held.size else None
        if isinstance(decision, Entries):
            self.stats["evicted"] += int(held.valid.sum()) - int(decision.valid.sum())
            held = decision
        elif decision is not None:
            kept = held.select(decision)
            self.stats["evicted"] += int(held.valid.sum()) - int(kept.valid.sum())
            held = kept
        k, v = k.to(storage), v.to(storage)
        L = k.shape[2]
        extra = {n: torch.cat([t, t.new_zeros(t.shape[0], L, *t.shape[2:])], 1) for n, t in held.extra.items()}
        now = Entries(torch.cat([held.k, k], 2), torch.cat([held.v, v], 2), torch.cat([held.pos, positions], 1),
                      torch.cat([held.valid, valid], 1), extra)
        self.entries[layer] = now
        return self._attended(layer, now, q, rows)

    def read(self, layer: int, *, q: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        """The entries of ``layer``'s source (written earlier in this advance), through the policy's retrieval."""
        if rows is not None and q is not None:
            full_q = q.new_zeros(self.batch_size, *q.shape[1:])
            full_q[rows] = q
            q = full_q
        return self._attended(layer, self.held(layer), q, rows)

    def _attended(self, layer: int, held: Entries, q, rows):
        """What the chunk's queries attend to: all held entries, or the policy's retrieved subset."""
        mask = self.policy.retrieve(self, layer, held, q)
        if mask is not None:
            mask = mask.to(torch.bool).clone()
            mask[:, held.size - self._last:] = True  # the current chunk is always read
            subset = held.select(mask)
            if subset is not held:
                self.stats["retrieved_steps"] += 1
            held = subset
        self.stats["read"] += int(held.valid.sum())
        self.stats["reads"] += 1
        k, v = held.k, held.v
        compute = self._compute_dtype
        if k.dtype != compute:  # stored narrower (CachePolicy.storage_dtype): read back in the model's dtype
            k, v = k.to(compute), v.to(compute)
        if rows is not None:
            return k[rows], v[rows], held.pos[rows], held.valid[rows]
        return k, v, held.pos, held.valid

    # -- the rest of the contract --------------------------------------------------------------
    def _map(self, fn) -> None:
        """Apply ``fn(entries) -> entries`` to every layer that holds entries of its own."""
        for i in self.owners():
            self.entries[i] = fn(self.entries[i])

    def reorder(self, index: torch.Tensor) -> None:
        self._refuse("reorder")
        index = index.to(self.device)
        pick = lambda t: _bits(t).index_select(0, index).view(t.dtype)  # noqa: E731
        self._map(lambda e: Entries(pick(e.k), pick(e.v), pick(e.pos), pick(e.valid), {n: pick(t) for n, t in e.extra.items()}))
        self.rows = [{n: pick(t) for n, t in r.items()} for r in self.rows]
        self._lengths = pick(self._lengths)
        if self._chunk is not None:
            self._chunk = (pick(self._chunk[0]), pick(self._chunk[1]))
        if self.layer_skip is not None:
            self.layer_skip = pick(self.layer_skip)
        self.batch_size = int(index.numel())

    def rollback(self, lengths) -> None:
        self._refuse("rollback")
        lengths = as_lengths(lengths, self.batch_size, self.device)
        if bool((lengths > self._lengths).any()):
            raise ValueError(f"cannot roll forward: asked for lengths {lengths.tolist()} but the cache holds {self._lengths.tolist()}")

        def cut(e: Entries) -> Entries:
            valid = e.valid & (e.pos < lengths[:, None])
            live = valid.any(0).nonzero()
            end = int(live.max()) + 1 if live.numel() else 0  # give back trailing entries no row holds
            if end == e.size:
                return Entries(e.k, e.v, e.pos, valid, e.extra)
            return Entries(e.k[:, :, :end].clone(), e.v[:, :, :end].clone(), e.pos[:, :end].clone(), valid[:, :end].clone(),
                           {n: t[:, :end].clone() for n, t in e.extra.items()})

        self._map(cut)
        self._lengths = lengths.clone()
        self._last = None

    def keep(self, keep: torch.Tensor) -> None:
        self._refuse("keep")
        L = self._last
        if not L or self._chunk is None:
            raise ValueError("keep() applies to the most recent advance, right after it (no rollback or restore in between)")
        keep = torch.as_tensor(keep, device=self.device).to(torch.bool)
        if keep.shape != (self.batch_size, L):
            raise ValueError(f"keep must be (batch, slots of the last advance) = {(self.batch_size, L)}, got {tuple(keep.shape)}")
        _, window = self._chunk
        keep = keep & window
        before = self._lengths - window.long().sum(1)
        count = keep.long().sum(1)
        width = int(count.max()) if count.numel() else 0
        order = torch.sort((~keep).int(), dim=1, stable=True).indices[:, :width]
        slot = torch.arange(width, device=self.device)[None]
        valid = slot < count[:, None]
        pos = torch.where(valid, before[:, None] + slot, 0)

        def tail(e: Entries) -> Entries:
            s = e.size - L
            head = lambda t, d: t.narrow(d, 0, s)  # noqa: E731
            routed = e.valid[:, s:].any(1, keepdim=True) | ~window.any(1, keepdim=True)  # rows a routed layer skipped stay empty
            return Entries(torch.cat([head(e.k, 2), _gather_kv(e.k[:, :, s:], order)], 2), torch.cat([head(e.v, 2), _gather_kv(e.v[:, :, s:], order)], 2),
                           torch.cat([head(e.pos, 1), pos], 1), torch.cat([head(e.valid, 1), valid & routed], 1),
                           {n: torch.cat([head(t, 1), _gather_rows(t[:, s:], order)], 1) for n, t in e.extra.items()})

        self._map(tail)
        self._lengths = before + count
        self._chunk = (pos, valid)
        self._last = width

    def snapshot(self):
        self._refuse("snapshot")
        return (list(self.entries), [dict(r) for r in self.rows], self._lengths.clone(), self._last, self._chunk)

    def restore(self, snap) -> None:
        self._refuse("snapshot")
        entries, rows, lengths, last, chunk = snap
        self.entries, self.rows, self._lengths, self._last, self._chunk = list(entries), [dict(r) for r in rows], lengths.clone(), last, chunk
        self.batch_size = int(lengths.numel())
