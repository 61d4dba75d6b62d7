"""Incremental state for step-wise decoding.

Every backbone gives a :class:`State` (KV cache, recurrent state). It can be advanced by one or
many tokens (the backbone's ``forward(h, state=...)``), reordered across the batch (beam search),
rolled back to per-sequence lengths and snapshotted/restored (speculative verification).

:class:`KVCache` is the core's cache for attention backbones. Its slots are append-only columns
with a per-sequence validity mask and stored positions, so sequences of one batch can have
different lengths (left padding, different numbers of accepted drafts) without copying: a rolled
back token just becomes an invalid slot, and attention masks it.

Three additions serve the cache techniques (docs/generation.md, "KV-cache policies"):

- **memory accounting**: :attr:`KVCache.nbytes` and :meth:`KVCache.layer_nbytes` count the bytes of
  the tensors the cache actually holds (each storage once), so savings are read, not assumed;
- **cross-layer sharing**: ``kv_source[layer]`` names the layer whose keys/values a layer reads
  (itself by default). A reading layer owns no storage: :meth:`KVCache.read` hands it the very
  tensors of its source (same ``data_ptr``), and the byte count shows the saving;
- **prompt-time layer routing**: :meth:`KVCache.set_layer_skip` fixes, before the first advance, a
  (B, n_layers) mask of layers each sequence skips; a backbone that honours it runs a layer only
  for the rows that keep it (``update(..., rows=...)``), so skipped layers neither compute nor
  write, and a layer every row skips holds no storage.

A :class:`genloom.core.cache_policy.ManagedKVCache` keeps this contract under a policy that evicts,
retrieves or compresses entries within a budget.
"""

from __future__ import annotations

import copy

import torch


class State:
    """The incremental-state contract. Subclasses implement all methods."""

    #: True when :meth:`rollback` can go back across any number of advances (a KV cache); False
    #: when only within the most recent advance (recurrent states keep only the last advance's steps).
    rollback_any: bool = False

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of real tokens each sequence has consumed."""
        raise NotImplementedError

    def reorder(self, index: torch.Tensor) -> None:
        """Select/reorder batch rows (beam search): row i becomes old row ``index[i]``."""
        raise NotImplementedError

    def rollback(self, lengths) -> None:
        """Forget tokens so that sequence b has consumed ``lengths[b]`` tokens (int: all rows).

        Every state supports rolling back within its most recent advance; a state that cannot
        go further back raises ``ValueError``.
        """
        raise NotImplementedError

    def keep(self, keep: torch.Tensor) -> None:
        """Keep only the tokens of the most recent advance flagged in ``keep`` (B, L) and forget the
        rest, as if the kept tokens alone had been consumed (a token tree's accepted path).

        Optional: a state that cannot do it raises ``NotImplementedError`` (the core's
        :class:`KVCache` can; tree decoders then verify each root-to-leaf path as a batch row).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot keep a subset of its last advance")

    def extend(self, other: "State") -> None:
        """Append the rows of ``other`` (a state of the same kind, from the same model) after this
        state's rows, each row keeping exactly what it has consumed: continuous batching admits a
        request prefilled on its own into a running batch this way.

        Afterwards row ``batch_size + i`` is ``other``'s row i; neither state's most recent advance
        can be rolled back into or kept from any more (take a snapshot before if needed). ``other``
        must not be used afterwards. Optional: a state that cannot do it raises
        ``NotImplementedError`` (the continuous-batching engine then rebuilds the batch's state by
        prefilling every live sequence again, which is exact but costs a forward pass).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot append another state's rows")

    def snapshot(self):
        """An opaque value :meth:`restore` accepts to return to this point."""
        raise NotImplementedError

    def restore(self, snap) -> None:
        raise NotImplementedError


def as_lengths(lengths, batch: int, device) -> torch.Tensor:
    if isinstance(lengths, int):
        return torch.full((batch,), lengths, dtype=torch.long, device=device)
    return torch.as_tensor(lengths, dtype=torch.long, device=device)


def check_kv_source(kv_source, n_layers: int) -> list[int]:
    """``kv_source`` as a list (identity when None); each layer reads itself or an earlier layer that owns its keys/values."""
    if kv_source is None:
        return list(range(n_layers))
    src = [int(s) for s in kv_source]
    if len(src) != n_layers:
        raise ValueError(f"kv_source must name one source layer per layer ({n_layers}), got {len(src)}")
    for i, s in enumerate(src):
        if not (0 <= s <= i and src[s] == s):
            raise ValueError(f"kv_source[{i}] = {s}: a layer reads itself or an earlier layer that holds its own keys/values")
    return src


def begin_chunk(h: torch.Tensor, state=None, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions (B, L) of the tokens of a backbone's input chunk ``h`` (B, L, D), and their validity.

    With a ``state`` (incremental decoding) the state reserves the chunk's slots and numbers it after
    what it holds (``state.begin``); without one, valid tokens are numbered from 0 in order (left
    padding takes position 0 and stays invalid), and a chunk without a validity mask is ``0 .. L-1``.
    """
    B, L = h.shape[:2]
    if state is not None:
        return state.begin(valid, L)
    if valid is not None:
        return (valid.long().cumsum(1) - 1).clamp_min(0), valid
    return torch.arange(L, device=h.device).expand(B, L), None


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a storage several tensors view counts once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


class KVCache(State):
    """A ragged key/value cache for ``n_layers`` attention layers.

    Usage inside a backbone's forward over new tokens ``h`` (B, L, D):

    1. ``positions, slot_valid = cache.begin(valid)`` -- reserves L slots, returns the new tokens'
       positions (B, L) (used for rotary embeddings) and their validity;
    2. each layer ``k_all, v_all, kv_pos, kv_valid = cache.update(layer, k, v)`` with k, v of shape
       (B, H_kv, L, Dh), and attends its queries (positions ``positions``) to all of them;
    3. the cache is advanced once ``begin`` was called; ``lengths`` counts valid tokens.
    """

    rollback_any = True
    policy = None
    """The :class:`~genloom.core.cache_policy.CachePolicy` managing the cache (None: keep everything)."""

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, capacity: int = 256, *, device=None, dtype=torch.float32,
                 kv_source=None):
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.kv_source = check_kv_source(kv_source, n_layers)
        self.layer_skip: torch.Tensor | None = None
        """(B, n_layers) bool: layers each sequence skips (:meth:`set_layer_skip`); None: none."""
        self.router = None
        """A callable ``(layer, h, valid) -> (B,) bool`` (True: the row skips ``layer``) asked once per
        layer during the first advance, with the layer's input hidden states (:meth:`route`); None: no router."""
        self._advances = 0
        shape = (batch_size, n_kv_heads, max(capacity, 1), head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) if self.kv_source[i] == i else None for i in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) if self.kv_source[i] == i else None for i in range(n_layers)]
        self._relink()
        self.valid = torch.zeros(batch_size, shape[2], dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch_size, shape[2], dtype=torch.long, device=device)
        self.used = 0
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._pending = 0  # slots reserved by the current begin()

    @property
    def device(self):
        return self.valid.device

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths

    # -- memory, sharing and routing --------------------------------------------------------
    def owners(self) -> list[int]:
        """The layers that hold keys/values of their own (every layer unless ``kv_source`` shares)."""
        return [i for i, s in enumerate(self.kv_source) if s == i]

    def _relink(self) -> None:
        """Point every reading layer at its source's tensors (after an operation replaced them)."""
        for i, s in enumerate(self.kv_source):
            if s != i:
                self.k[i], self.v[i] = self.k[s], self.v[s]

    def shares(self, layer: int) -> bool:
        """True when ``layer`` reads another layer's keys/values (:meth:`read`, not :meth:`update`)."""
        return self.kv_source[layer] != layer

    def _tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (keys, values and bookkeeping), each once."""
        return [*(self.k[i] for i in self.owners()), *(self.v[i] for i in self.owners()), self.valid, self.pos, self._lengths]

    @property
    def nbytes(self) -> int:
        """Bytes of memory the cache holds: every tensor's storage, counted once (shared storage once)."""
        return storage_bytes(self._tensors())

    def layer_nbytes(self) -> list[int]:
        """Bytes of key/value storage each layer owns (a layer that reads another's, or that every
        sequence skips, owns 0)."""
        return [storage_bytes([self.k[i], self.v[i]]) if self.kv_source[i] == i else 0 for i in range(self.n_layers)]

    def set_layer_skip(self, skip: torch.Tensor | None) -> None:
        """Fix the layers each sequence skips: ``skip`` (B, n_layers) bool, set before the first advance.

        A skipped layer is the identity for that sequence at every later step (prefill included) and
        its keys/values are never written; a layer that every sequence skips gives its storage back.
        A layer another layer reads (``kv_source``) cannot be skipped alone: the reader must be too.
        """
        if bool((self.lengths > 0).any()):
            raise ValueError("set_layer_skip: the skip mask is fixed at prefill, before the cache holds any token")
        if skip is None:
            self.layer_skip = None
            return
        skip = torch.as_tensor(skip, device=self.device).to(torch.bool)
        if skip.shape != (self.batch_size, self.n_layers):
            raise ValueError(f"set_layer_skip: the mask must be (batch, n_layers) = {(self.batch_size, self.n_layers)}, got {tuple(skip.shape)}")
        for i, s in enumerate(self.kv_source):
            if s != i and bool((skip[:, s] & ~skip[:, i]).any()):
                raise ValueError(f"set_layer_skip: layer {i} reads layer {s}'s keys/values, so layer {s} cannot be skipped where layer {i} runs")
        self.layer_skip = skip
        for i in self.owners():
            if bool(skip[:, i].all()):
                self._drop_layer(i)
        self._relink()

    def route(self, layer: int, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor | None:
        """The (B,) mask of rows that skip ``layer`` in this advance, or None when every row runs it.

        A backbone calls it before each layer with the layer's input ``h``. During the first advance
        (the prefill) a :attr:`router` decides, once per layer, and the decision joins
        :attr:`layer_skip`: fixed for every later step. A layer that reads another's keys/values is
        skipped wherever its source is.
        """
        if self.router is not None and self._advances == 1 and not getattr(self, "_routed", {}).get(layer):
            col = torch.as_tensor(self.router(layer, h, valid), device=self.device).to(torch.bool).reshape(self.batch_size)
            skip = self.layer_skip.clone() if self.layer_skip is not None else torch.zeros(self.batch_size, self.n_layers, dtype=torch.bool, device=self.device)
            src = self.kv_source[layer]
            skip[:, layer] = col | (skip[:, src] if src != layer else False)
            self.layer_skip = skip
            self.__dict__.setdefault("_routed", {})[layer] = True
            if bool(skip[:, layer].all()) and src == layer:
                self._drop_layer(layer)
                self._relink()
        if self.layer_skip is None:
            return None
        col = self.layer_skip[:, layer]
        return col if bool(col.any()) else None

    def _drop_layer(self, layer: int) -> None:
        empty = self.k[layer][:, :, :0].clone()
        self.k[layer], self.v[layer] = empty, empty.clone()

    def _dropped(self, layer: int) -> bool:
        return self.layer_skip is not None and bool(self.layer_skip[:, layer].all())

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new_cap = max(needed, 2 * self.capacity)
        extra = new_cap - self.capacity
        for store in (self.k, self.v):
            for i in self.owners():
                t = store[i]
                if self._dropped(i):
                    continue
                pad = t.new_zeros(t.shape[0], t.shape[1], extra, t.shape[3])
                store[i] = torch.cat([t, pad], dim=2)
        self._relink()
        self.valid = torch.cat([self.valid, self.valid.new_zeros(self.batch_size, extra)], dim=1)
        self.pos = torch.cat([self.pos, self.pos.new_zeros(self.batch_size, extra)], dim=1)

    def begin(self, valid: torch.Tensor | None, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reserve slots for ``length`` new tokens; return their positions and validity (B, L)."""
        if valid is None:
            valid = torch.ones(self.batch_size, length, dtype=torch.bool, device=self.device)
        valid = valid.to(self.device, torch.bool)
        L = valid.shape[1]
        self._grow(self.used + L)
        positions = self._lengths[:, None] + valid.long().cumsum(1) - 1
        positions = positions.clamp_min(0)
        sl = slice(self.used, self.used + L)
        self.valid[:, sl] = valid
        self.pos[:, sl] = positions
        self._start = self.used
        self._last_advance_slots = (self.used, L)
        self.used += L
        self._advances += 1
        self._end = self.used  # the slots update()/read() return: up to this advance
        self._lengths = self._lengths + valid.long().sum(1)
        return positions, valid

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, *, q: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        """Write the current chunk's keys/values for ``layer``; return all keys/values, positions and validity.

        ``q`` (the chunk's queries) is for a cache policy and ignored here. ``rows`` (a (R,) index):
        ``k``/``v`` are those batch rows only (layer routing: the other rows skip this layer); the
        return value is then of those rows too.
        """
        if self.shares(layer):
            raise ValueError(f"layer {layer} reads layer {self.kv_source[layer]}'s keys/values (kv_source): call read(), not update()")
        L = k.shape[2]
        sl = slice(self._start, self._start + L)
        if self.k[layer].dtype != k.dtype:
            self.k[layer] = self.k[layer].to(k.dtype)
            self.v[layer] = self.v[layer].to(v.dtype)
            self._relink()
        if rows is None:
            self.k[layer][:, :, sl] = k
            self.v[layer][:, :, sl] = v
        else:
            self.k[layer][rows, :, sl] = k
            self.v[layer][rows, :, sl] = v
        self._end = self._start + L  # what this advance's layers read (a subclass's begin may not set it)
        return self.read(layer, rows=rows)

    def read(self, layer: int, *, q: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        """Keys/values, positions and validity ``layer`` attends to (its source's, for a reading
        layer), up to the current chunk; the tensors are views of the cache's own storage."""
        used = getattr(self, "_end", 0)
        src = self.kv_source[layer]
        k, v, pos, valid = self.k[src][:, :, :used], self.v[src][:, :, :used], self.pos[:, :used], self.valid[:, :used]
        if rows is not None:
            return k[rows], v[rows], pos[rows], valid[rows]
        return k, v, pos, valid

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.device)
        self.k = [t.index_select(0, index) if t is not None and self.kv_source[i] == i else None for i, t in enumerate(self.k)]
        self.v = [t.index_select(0, index) if t is not None and self.kv_source[i] == i else None for i, t in enumerate(self.v)]
        self._relink()
        if self.layer_skip is not None:
            self.layer_skip = self.layer_skip.index_select(0, index)
        self.valid = self.valid.index_select(0, index)
        self.pos = self.pos.index_select(0, index)
        self._lengths = self._lengths.index_select(0, index)
        self.batch_size = int(index.numel())

    def rollback(self, lengths) -> None:
        lengths = as_lengths(lengths, self.batch_size, self.device)
        if bool((lengths > self._lengths).any()):
            raise ValueError(f"cannot roll forward: asked for lengths {lengths.tolist()} but the cache holds {self._lengths.tolist()}")
        keep = self.valid & (self.valid.long().cumsum(1) <= lengths[:, None])
        self.valid = keep
        self._lengths = lengths.clone()
        # reclaim trailing slots no sequence uses any more
        any_valid = keep[:, : self.used].any(0).nonzero()
        self.used = int(any_valid.max()) + 1 if any_valid.numel() else 0

    def _last_advance(self, keep: torch.Tensor) -> tuple[int, int, torch.Tensor]:
        """(first slot, slot count, keep mask on the device) of the most recent advance."""
        start, L = getattr(self, "_last_advance_slots", (None, None))
        if start is None or start + L != self.used:
            raise ValueError("keep() applies to the most recent advance, right after it (no rollback or restore in between)")
        keep = torch.as_tensor(keep, device=self.device).to(torch.bool)
        if keep.shape != (self.batch_size, L):
            raise ValueError(f"keep must be (batch, slots of the last advance) = {(self.batch_size, L)}, got {tuple(keep.shape)}")
        return start, L, keep

    def _kept_layout(self, start: int, L: int, keep: torch.Tensor):
        """Gather order, new validity, new positions and new lengths for :meth:`keep`."""
        window = self.valid[:, start:start + L]
        keep = keep & window
        before = self._lengths - window.long().sum(1)  # tokens each row held before the advance
        order = torch.sort((~keep).int(), dim=1, stable=True).indices  # kept slots first, order kept
        count = keep.long().sum(1)
        slot = torch.arange(L, device=self.device)[None]
        valid = slot < count[:, None]
        pos = torch.where(valid, before[:, None] + slot, 0)
        return order, valid, pos, before + count

    def keep(self, keep: torch.Tensor) -> None:
        """Keep only the slots of the most recent advance flagged in ``keep`` (B, L) and drop the rest.

        The kept slots of each row move to the front of that advance's columns, in order, and get
        the positions that follow the row's earlier tokens (what a token tree's accepted root-to-leaf
        path needs: its nodes become one contiguous continuation); the columns past the longest kept
        run are reclaimed, so rejected drafts take no memory. Keys keep the positional encoding they
        were computed with: the caller makes sure it is the position they get here (a tree pattern's
        ``positions`` gives node i the position ``start + depth[i]``).
        """
        start, L, keep = self._last_advance(keep)
        order, valid, pos, lengths = self._kept_layout(start, L, keep)
        sl = slice(start, start + L)
        for store in (self.k, self.v):
            for i in self.owners():
                t = store[i]
                if not self._dropped(i):
                    t[:, :, sl] = t[:, :, sl].gather(2, order[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))
        self.valid[:, sl] = valid
        self.pos[:, sl] = pos
        self._lengths = lengths
        self.used = start + int(valid.long().sum(1).max()) if self.batch_size else start
        self._last_advance_slots = (start, self.used - start)

    def extend(self, other: "State") -> None:
        """:meth:`State.extend`: the two stores are stacked along the batch; the shorter one's missing
        slots are invalid (attention masks them) and the capacity is the larger of the two."""
        if type(other) is not type(self) or type(self) is not KVCache:
            raise NotImplementedError(f"{type(self).__name__}.extend takes another {type(self).__name__} (got a {type(other).__name__})")
        if self.layer_skip is not None or other.layer_skip is not None or self.router is not None or other.router is not None:
            raise NotImplementedError("a cache with routed layers cannot append another cache's rows (the rows' skip masks differ)")
        if other.kv_source != self.kv_source:
            raise ValueError(f"cannot stack caches with different layer sharing: kv_source {self.kv_source} and {other.kv_source}")
        if other.n_layers != self.n_layers or other.k[0].shape[1::2] != self.k[0].shape[1::2]:
            raise ValueError(f"cannot stack caches of different models: {self.n_layers} layers of {tuple(self.k[0].shape[1::2])} (heads, head size) "
                             f"and {other.n_layers} of {tuple(other.k[0].shape[1::2])}")
        self._grow(other.capacity)
        extra = self.capacity - other.capacity

        def widen(t: torch.Tensor, dim: int) -> torch.Tensor:
            if not extra:
                return t
            shape = list(t.shape)
            shape[dim] = extra
            return torch.cat([t, t.new_zeros(shape)], dim)

        owners = set(self.owners())
        self.k = [torch.cat([a, widen(b, 2).to(a.dtype)]) if i in owners else None for i, (a, b) in enumerate(zip(self.k, other.k))]
        self.v = [torch.cat([a, widen(b, 2).to(a.dtype)]) if i in owners else None for i, (a, b) in enumerate(zip(self.v, other.v))]
        self._relink()
        self.valid = torch.cat([self.valid, widen(other.valid, 1)])
        self.pos = torch.cat([self.pos, widen(other.pos, 1)])
        self._lengths = torch.cat([self._lengths, other._lengths])
        self.used = max(self.used, other.used)
        self.batch_size += other.batch_size
        self._last_advance_slots = (None, None)

    def compact(self) -> None:
        """Move every sequence's valid slots to the left, in order, and reclaim the slots past the
        longest sequence (what a continuous batch does after evicting finished sequences). Keys keep
        their stored positions, so attention is unchanged."""
        order = torch.sort((~self.valid).int(), dim=1, stable=True).indices  # valid slots first, order kept
        for store in (self.k, self.v):
            for i in self.owners():
                t = store[i]
                if t.shape[2] == self.capacity:  # not a layer every row skips (it holds nothing)
                    store[i] = t.gather(2, order[:, None, :, None].expand_as(t))
        self._relink()  # reading layers keep sharing their source's new storage
        self.pos = self.pos.gather(1, order)
        self.valid = self.valid.gather(1, order)
        self.used = int(self.valid.sum(1).max()) if self.batch_size else 0
        self._last_advance_slots = (None, None)

    def snapshot(self):
        return (self.used, self.valid.clone(), self.pos.clone(), self._lengths.clone())

    def restore(self, snap) -> None:
        self.used, valid, pos, lengths = snap
        extra = self.capacity - valid.shape[1]  # the cache may have grown since the snapshot
        self.valid = torch.cat([valid, valid.new_zeros(valid.shape[0], extra)], 1) if extra else valid.clone()
        self.pos = torch.cat([pos, pos.new_zeros(pos.shape[0], extra)], 1) if extra else pos.clone()
        self._lengths = lengths.clone()


class StaticKVCache(KVCache):
    """A :class:`KVCache` of fixed shape whose tensors never move: the cache a compiled decode step
    (``torch.compile``, CUDA graphs) can capture.

    It keeps :class:`KVCache`'s contract and slot layout (append-only columns, per-sequence validity
    and positions, ``begin``/``update`` for backbones), with three differences:

    - ``update`` returns the whole preallocated store (all ``capacity`` slots) with the validity
      mask; slots not written yet are invalid, so attention masks them and every step of a decode
      loop has the same shapes;
    - the number of used slots lives in a device tensor as well as in a host integer, and every
      method changes the store in place (``copy_``, ``index_copy_``), so the addresses a CUDA graph
      recorded stay valid; ``begin`` inside a compiled region reads only the device copy (the
      caller reserves the slots on the host first with :meth:`reserve`, outside the region);
    - it never grows: an advance past ``capacity`` first compacts the valid slots to the left
      (order kept), and raises ``ValueError`` if they still do not fit. Reordering to a different
      batch size (a decoder that expands each row to k rows) reallocates the store, which a
      compiled step then captures anew.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, capacity: int = 256, *, device=None, dtype=torch.float32,
                 kv_source=None):
        super().__init__(n_layers, batch_size, n_kv_heads, head_dim, capacity, device=device, dtype=dtype, kv_source=kv_source)
        self._used = torch.zeros((), dtype=torch.long, device=self.device)
        self._slots = torch.arange(self.capacity, device=self.device)

    @classmethod
    def like(cls, cache: KVCache) -> "StaticKVCache":
        """An empty static cache with the shapes, capacity, device and dtype of ``cache``."""
        k = cache.k[0]
        return cls(cache.n_layers, cache.batch_size, k.shape[1], k.shape[3], cache.capacity, device=k.device, dtype=k.dtype, kv_source=cache.kv_source)

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths.clone()  # the store changes in place; callers keep values

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor of the store."""
        return [*self._kv(), self.valid, self.pos, self._lengths, self._used, self._slots]

    def _kv(self) -> list[torch.Tensor]:
        """The key and value tensors, each once (reading layers share their source's)."""
        return [*(self.k[i] for i in self.owners()), *(self.v[i] for i in self.owners())]

    def mark_static(self) -> None:
        """Tell ``torch.compile`` that the store's tensors keep their addresses (a CUDA graph then
        reads them in place instead of copying them in at every replay)."""
        self._static_marked = True
        for t in self.buffers():
            torch._dynamo.mark_static_address(t)

    def reset(self) -> None:
        """Forget every token; the store stays where it is (a compiled step keeps its graph)."""
        self.valid.zero_()
        self.pos.zero_()
        self._lengths.zero_()
        self._used.zero_()
        self.used = 0

    def _grow(self, needed: int) -> None:
        if needed > self.capacity:
            raise ValueError(f"the static KV cache holds {self.capacity} slots per sequence; {needed} are needed")

    def reserve(self, length: int) -> None:
        """Reserve ``length`` slots on the host (capacity check, compaction): what ``begin`` does
        outside a compiled region, and what the caller of a compiled step does before it."""
        if self.used + length > self.capacity:
            self.compact()
            if self.used + length > self.capacity:
                raise ValueError(f"the static KV cache holds {self.capacity} slots per sequence and {self.used} are in use: "
                                 f"{length} more do not fit (give it a larger capacity)")
        self.used += length

    def compact(self) -> None:
        """Move every sequence's valid slots to the left, in order, and reclaim the rest."""
        order = torch.sort((~self.valid).int(), dim=1, stable=True).indices  # valid slots first, order kept
        for t in self._kv():
            t.copy_(t.gather(2, order[:, None, :, None].expand_as(t)))
        self.pos.copy_(self.pos.gather(1, order))
        self.valid.copy_(self.valid.gather(1, order))
        self.used = int(self.valid.sum(1).max()) if self.batch_size else 0
        self._used.fill_(self.used)

    def begin(self, valid: torch.Tensor | None, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if valid is None:
            valid = torch.ones(self.batch_size, length, dtype=torch.bool, device=self.device)
        valid = valid.to(self.device, torch.bool)
        L = valid.shape[1]
        if not torch.compiler.is_compiling():
            self.reserve(L)
            self._last_advance_slots = (self.used - L, L)
        positions = (self._lengths[:, None] + valid.long().cumsum(1) - 1).clamp_min(0)
        index = self._used + torch.arange(L, device=self.device)
        self.valid.index_copy_(1, index, valid)
        self.pos.index_copy_(1, index, positions)
        self._used.add_(L)
        self._lengths.add_(valid.long().sum(1))
        return positions, valid

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, *, q: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        """Write the current chunk's keys/values; return the whole store, positions and validity."""
        if rows is not None:
            raise ValueError("the static KV cache does not route layers per row (set_layer_skip); use cache=dynamic")
        L = k.shape[2]
        if self.k[layer].dtype != k.dtype and not torch.compiler.is_compiling():
            self.k[layer] = self.k[layer].to(k.dtype)  # once, in the eager prefill (autocast)
            self.v[layer] = self.v[layer].to(v.dtype)
            self._relink()
        index = self._used - L + torch.arange(L, device=self.device)  # the slots begin() reserved
        self.k[layer].index_copy_(2, index, k)
        self.v[layer].index_copy_(2, index, v)
        return self.k[layer], self.v[layer], self.pos, self.valid

    def read(self, layer: int, *, q: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        if rows is not None:
            raise ValueError("the static KV cache does not route layers per row (set_layer_skip); use cache=dynamic")
        src = self.kv_source[layer]
        return self.k[src], self.v[src], self.pos, self.valid

    def set_layer_skip(self, skip) -> None:
        if skip is not None:
            raise ValueError("the static KV cache does not route layers per row (set_layer_skip); use cache=dynamic")

    def route(self, layer: int, h: torch.Tensor, valid: torch.Tensor | None) -> None:
        if self.router is not None:
            raise ValueError("the static KV cache does not route layers per row (a layer router); use cache=dynamic")
        return None

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.device)
        if index.numel() != self.batch_size:
            super().reorder(index)  # a new batch size needs a new store
            if getattr(self, "_static_marked", False):
                self.mark_static()
            return
        for t in (*self._kv(), self.valid, self.pos, self._lengths):
            t.copy_(t.index_select(0, index))

    def rollback(self, lengths) -> None:
        lengths = as_lengths(lengths, self.batch_size, self.device)
        if bool((lengths > self._lengths).any()):
            raise ValueError(f"cannot roll forward: asked for lengths {lengths.tolist()} but the cache holds {self._lengths.tolist()}")
        self.valid.copy_(self.valid & (self.valid.long().cumsum(1) <= lengths[:, None]))
        self._lengths.copy_(lengths)
        # reclaim trailing slots no sequence uses any more
        last = torch.where(self.valid.any(0), self._slots + 1, 0).max()
        self._used.copy_(last)
        self.used = int(last)

    def keep(self, keep: torch.Tensor) -> None:
        """:meth:`KVCache.keep`, in place (the store keeps its addresses)."""
        start, L, keep = self._last_advance(keep)
        order, valid, pos, lengths = self._kept_layout(start, L, keep)
        sl = slice(start, start + L)
        for t in self._kv():
            t[:, :, sl].copy_(t[:, :, sl].gather(2, order[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])))
        self.valid[:, sl].copy_(valid)
        self.pos[:, sl].copy_(pos)
        self._lengths.copy_(lengths)
        self.used = start + int(valid.long().sum(1).max()) if self.batch_size else start
        self._used.fill_(self.used)
        self._last_advance_slots = (start, self.used - start)

    def snapshot(self):
        return (self.used, self.valid.clone(), self.pos.clone(), self._lengths.clone())

    def restore(self, snap) -> None:
        used, valid, pos, lengths = snap
        if valid.shape != self.valid.shape:
            raise ValueError(f"the snapshot is of a cache of shape {tuple(valid.shape)}, this one is {tuple(self.valid.shape)}")
        self.used = used
        self._used.fill_(used)
        self.valid.copy_(valid)
        self.pos.copy_(pos)
        self._lengths.copy_(lengths)


class EncoderMemoryState(State):
    """The state of an encoder-decoder backbone: the decoder's own incremental state plus a
    per-request memory that the encoder computes once from the source (each decoder layer's
    cross-attention keys and values).

    The sequence is the prefix-LM layout ``[source block of S ids | target]``: the encoder reads
    positions ``0 .. S-1`` at once, the decoder reads positions ``S-1 ..`` (the last source
    position is its start token). The memory therefore stands for ``source_offset = S - 1``
    positions the decoder never sees, and :attr:`lengths` counts them: a row whose memory is set
    has consumed ``source_offset + decoder.lengths`` tokens, the same count a prefix LM's cache
    holds, so decoders written against :class:`KVCache` (rollback to ``lengths``, speculative
    verification, beam reorder, continuous batching) see no difference.

    - ``decoder``: the decoder's self-attention state (a :class:`KVCache`); it holds target-side
      tokens only;
    - ``memory``: a list of batch-first tensors (B, ...), e.g. keys and values (B, H, S, Dh) per
      decoder layer; written only by :meth:`set_memory`, out of place, so a :meth:`snapshot` holds
      it by reference at no cost;
    - :attr:`ready` (B,): rows whose memory is set. A backbone runs its encoder for the rows that
      are not ready when their source block arrives, and never again for that request.

    Rollback never reaches into the encoded source: a ready row rolls back to any length from
    ``source_offset`` up (the memory stays: rolling back to ``S - 1`` and feeding the last source id
    again is how decoders that hold back the last prompt token start) or to 0 (the row forgets its
    request, memory included); a length in between raises ``ValueError``.
    """

    rollback_any = True

    def __init__(self, decoder: State, memory: list[torch.Tensor], source_offset: int):
        self.decoder = decoder
        self.memory = list(memory)
        self.source_offset = int(source_offset)
        device = self.memory[0].device if self.memory else None
        batch = self.memory[0].shape[0] if self.memory else int(decoder.lengths.shape[0])
        self.ready = torch.zeros(batch, dtype=torch.bool, device=device)
        self.decoder_start = 0
        """First column of the most recent advance that the decoder consumed (the columns before
        it held source positions only the encoder read); :meth:`keep` maps its mask through it."""

    @property
    def batch_size(self) -> int:
        return int(self.ready.shape[0])

    @property
    def policy(self):
        """The decoder cache's policy (None: keep everything)."""
        return getattr(self.decoder, "policy", None)

    @property
    def lengths(self) -> torch.Tensor:
        return self.decoder.lengths + self.source_offset * self.ready.long()

    def set_memory(self, rows: torch.Tensor, values: list[torch.Tensor]) -> None:
        """Write the memory of batch ``rows`` ((R,) index) from ``values`` (one (R, ...) tensor per
        memory entry) and mark them ready; the old tensors are left untouched (snapshots keep them)."""
        if len(values) != len(self.memory):
            raise ValueError(f"set_memory: {len(values)} memory entries given, the state holds {len(self.memory)}")
        rows = rows.to(self.ready.device)
        self.memory = [m.index_copy(0, rows, v.to(m.dtype)) for m, v in zip(self.memory, values)]
        ready = self.ready.clone()
        ready[rows] = True
        self.ready = ready

    @property
    def memory_nbytes(self) -> int:
        """Bytes of the memory (the cross-attention keys/values), fixed per request."""
        return storage_bytes(self.memory)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoder's state plus the memory and the ready mask."""
        return int(getattr(self.decoder, "nbytes", 0)) + storage_bytes([*self.memory, self.ready])

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.ready.device)
        self.memory = [m.index_select(0, index) for m in self.memory]
        self.ready = self.ready.index_select(0, index)
        self.decoder.reorder(index)

    def rollback(self, lengths) -> None:
        lengths = as_lengths(lengths, self.batch_size, self.ready.device)
        offset = self.source_offset * self.ready.long()
        inside = self.ready & (lengths < self.source_offset) & (lengths > 0)
        if bool(inside.any()):
            rows = inside.nonzero().flatten().tolist()
            raise ValueError(f"cannot roll rows {rows} back into their encoded source: a row keeps at least its {self.source_offset} "
                             f"source positions (or goes back to 0), asked for {lengths[inside].tolist()}")
        forget = self.ready & (lengths == 0) & (self.source_offset > 0)
        self.decoder.rollback(torch.where(forget, 0, lengths - offset).clamp_min(0))
        if bool(forget.any()):
            self.ready = self.ready & ~forget

    def keep(self, keep: torch.Tensor) -> None:
        keep = torch.as_tensor(keep, device=self.ready.device).to(torch.bool)
        if self.decoder_start and not bool(keep[:, : self.decoder_start].all()):
            raise ValueError("keep: the most recent advance began with source positions, which the encoder read; they cannot be dropped")
        self.decoder.keep(keep[:, self.decoder_start :])
        self.decoder_start = 0

    def extend(self, other: "State") -> None:
        if not isinstance(other, EncoderMemoryState) or other.source_offset != self.source_offset or len(other.memory) != len(self.memory):
            raise ValueError(f"cannot append a {type(other).__name__} to an encoder-memory state (they must come from the same model)")
        self.decoder.extend(other.decoder)
        self.memory = [torch.cat([a, b.to(a.dtype)]) for a, b in zip(self.memory, other.memory)]
        self.ready = torch.cat([self.ready, other.ready])
        self.decoder_start = 0

    def compact(self) -> None:
        """Compact the decoder's state (the memory has no empty slots)."""
        if hasattr(self.decoder, "compact"):
            self.decoder.compact()

    def __copy__(self):
        """A copy whose rows can be reordered without touching this state (its decoder state copied
        too, as ``copy.copy`` of a :class:`KVCache` is): what tree drafting does with one branch per row."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.decoder = copy.copy(self.decoder)
        other.memory = list(self.memory)
        return other

    def snapshot(self):
        return (self.decoder.snapshot(), list(self.memory), self.ready.clone(), self.decoder_start)

    def restore(self, snap) -> None:
        decoder, memory, ready, start = snap
        self.decoder.restore(decoder)
        self.memory, self.ready, self.decoder_start = list(memory), ready.clone(), start
