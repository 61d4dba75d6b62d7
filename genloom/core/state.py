"""Incremental state for step-wise decoding.

Every backbone gives a :class:`State` (KV cache, recurrent state). It can be advanced by one or
many tokens (the backbone's ``forward(h, state=...)``), reordered across the batch (beam search),
rolled back to per-sequence lengths and snapshotted/restored (speculative verification).

:class:`KVCache` is the core's cache for attention backbones. Its slots are append-only columns
with a per-sequence validity mask and stored positions, so sequences of one batch can have
different lengths (left padding, different numbers of accepted drafts) without copying: a rolled
back token just becomes an invalid slot, and attention masks it.
"""

from __future__ import annotations

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

    def snapshot(self):
        """An opaque value :meth:`restore` accepts to return to this point."""
        raise NotImplementedError

    def restore(self, snap) -> None:
        raise NotImplementedError


def as_lengths(lengths, batch: int, device) -> torch.Tensor:
    if isinstance(lengths, int):
        return torch.full((batch,), lengths, dtype=torch.long, device=device)
    return torch.as_tensor(lengths, dtype=torch.long, device=device)


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

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, capacity: int = 256, *, device=None, dtype=torch.float32):
        self.n_layers = n_layers
        self.batch_size = batch_size
        shape = (batch_size, n_kv_heads, max(capacity, 1), head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
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

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new_cap = max(needed, 2 * self.capacity)
        extra = new_cap - self.capacity
        for store in (self.k, self.v):
            for i, t in enumerate(store):
                pad = t.new_zeros(t.shape[0], t.shape[1], extra, t.shape[3])
                store[i] = torch.cat([t, pad], dim=2)
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
        self.used += L
        self._lengths = self._lengths + valid.long().sum(1)
        return positions, valid

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write the current chunk's keys/values for ``layer``; return all keys/values, positions and validity."""
        L = k.shape[2]
        sl = slice(self._start, self._start + L)
        if self.k[layer].dtype != k.dtype:
            self.k[layer] = self.k[layer].to(k.dtype)
            self.v[layer] = self.v[layer].to(v.dtype)
        self.k[layer][:, :, sl] = k
        self.v[layer][:, :, sl] = v
        used = self._start + L
        return self.k[layer][:, :, :used], self.v[layer][:, :, :used], self.pos[:, :used], self.valid[:, :used]

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.device)
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
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

    def snapshot(self):
        return (self.used, self.valid.clone(), self.pos.clone(), self._lengths.clone())

    def restore(self, snap) -> None:
        self.used, valid, pos, lengths = snap
        extra = self.capacity - valid.shape[1]  # the cache may have grown since the snapshot
        self.valid = torch.cat([valid, valid.new_zeros(valid.shape[0], extra)], 1) if extra else valid.clone()
        self.pos = torch.cat([pos, pos.new_zeros(pos.shape[0], extra)], 1) if extra else pos.clone()
        self._lengths = lengths.clone()
