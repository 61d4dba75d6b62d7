"""Key/value caches for masked-diffusion canvases, each with a count of recomputed positions.

A masked-diffusion decoder calls its network many times on almost the same canvas. Three ways to
avoid recomputing what did not change, each a small object a decoder drives:

- :class:`PrefixCache` (LaViDa's prefix-KV cache) -- under :class:`PromptIsolated` attention the
  prompt never attends to the answer, so the prompt's keys/values do not depend on the answer and
  are computed once; each step runs only the answer against them. Exact: the cached logits equal
  a full recomputation with the same pattern.
- :class:`BlockCache` (BD3-LM, SDAR, Fast-dLLM v2's block-level cache) -- with block-causal
  attention a finished block never sees later blocks, so its keys/values are final once it is
  committed; each step runs only the block in progress against them. Exact.
- :class:`StaleCache` (Fast-dLLM v2's sub-block cache, FreeCache, dLLM-Cache-like schemes) -- one
  full pass computes every position's keys/values (a *refresh*); until the next refresh, steps
  recompute only an *active* set of columns (the block or sub-block being decoded) and reuse the
  refreshed keys/values of all the others. An approximation: it is exact at a refresh and as long
  as nothing outside the active set changed since; with a refresh every step it is the uncached
  decoder, exactly.

Every cache counts, in ``positions`` (query positions run through the network, summed over the
batch), what it recomputed, so a speed-up is measured rather than assumed. :class:`CanvasKVCache`
is the core :class:`~genloom.core.state.KVCache` with two additions these caches need: the next
chunk's positions can be given explicitly, and cached slots can be hidden for one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genloom.core.pattern import FULL, AttentionPattern, block_causal
from genloom.core.state import KVCache


# -- the cache object -----------------------------------------------------------------------------

class CanvasKVCache(KVCache):
    """A :class:`KVCache` whose next chunk can carry explicit ``positions`` and whose slots can be hidden.

    Built from the model's own state with :meth:`like` (any backbone whose state is a ``KVCache``).
    """

    next_positions: torch.Tensor | None = None

    @classmethod
    def like(cls, state: KVCache) -> "CanvasKVCache":
        if not isinstance(state, KVCache):
            raise TypeError(f"canvas caches need a backbone with a KVCache state, got {type(state).__name__}")
        if type(state) is not KVCache:  # e.g. a StaticKVCache: start from a plain cache of the same shapes
            k = state.k[0]
            state = KVCache(state.n_layers, state.batch_size, k.shape[1], k.shape[3], state.capacity, device=k.device, dtype=k.dtype)
        new = cls.__new__(cls)
        new.__dict__.update(state.__dict__)
        new.next_positions = None
        return new

    def begin(self, valid, length=None):
        if self.next_positions is None:
            return super().begin(valid, length)
        positions = self.next_positions.to(self.device)
        if valid is None:
            valid = torch.ones(positions.shape, dtype=torch.bool, device=self.device)
        valid = valid.to(self.device, torch.bool)
        L = valid.shape[1]
        self._grow(self.used + L)
        sl = slice(self.used, self.used + L)
        self.valid[:, sl] = valid
        self.pos[:, sl] = positions
        self._start = self.used
        self.used += L
        self._lengths = self._lengths + valid.long().sum(1)
        return positions, valid


def canvas_positions(valid: torch.Tensor) -> torch.Tensor:
    """Model positions of a left-padded canvas (the transformer's convention: count of real tokens before)."""
    return (valid.long().cumsum(1) - 1).clamp_min(0)


def run_slots(model, cache: CanvasKVCache, ids: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
              valid: torch.Tensor, pattern: AttentionPattern) -> torch.Tensor:
    """Logits of ``ids`` (B, n), fresh versions of the tokens cached in ``slots`` (n,), against ``cache``.

    The stale cached copies are hidden, the fresh keys/values appended with ``positions`` (B, n),
    and the cache restored afterwards, so it is unchanged.
    """
    snap = cache.snapshot()
    try:
        cache.valid[:, slots] = False
        cache.next_positions = positions
        return model(ids, state=cache, valid=valid, pattern=pattern)
    finally:
        cache.next_positions = None
        cache.restore(snap)


def run_columns(model, cache: CanvasKVCache, ids: torch.Tensor, columns: torch.Tensor, positions: torch.Tensor,
                valid: torch.Tensor, pattern: AttentionPattern) -> torch.Tensor:
    """:func:`run_slots` for a cache whose slot ``j`` holds canvas column ``j``."""
    return run_slots(model, cache, ids[:, columns], columns, positions[:, columns], valid[:, columns], pattern)


# -- patterns -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptIsolated(AttentionPattern):
    """LaViDa's inference mask: the first ``prefix_length`` positions (the prompt) attend only to
    each other (bidirectionally); the answer attends to everything."""

    kind: str = "prompt_isolated"

    def __post_init__(self):
        if self.prefix_length is None or self.prefix_length < 0:
            raise ValueError("PromptIsolated needs prefix_length >= 0")

    @property
    def is_causal(self) -> bool:
        return False

    def allowed(self, q_pos, kv_pos):
        return (q_pos >= self.prefix_length) | (kv_pos < self.prefix_length)


def prompt_isolated(prefix_length: int) -> PromptIsolated:
    return PromptIsolated(prefix_length=prefix_length)


# -- the three caches -----------------------------------------------------------------------------

class PrefixCache:
    """The prompt's keys/values, computed once (the prompt never attends to the answer)."""

    def __init__(self, model, prompt: torch.Tensor, prompt_valid: torch.Tensor, capacity: int, counter=None):
        self.model = model
        self.count = counter or (lambda n: None)
        self.state = model.init_state(prompt.shape[0], prompt.shape[1] + capacity)
        model(prompt, state=self.state, valid=prompt_valid, pattern=FULL)
        self.positions = int(prompt_valid.sum())
        self.count(1)
        self.lengths = self.state.lengths.clone()

    def logits(self, answer: torch.Tensor) -> torch.Tensor:
        """Logits of the answer canvas (B, G) attending to the cached prompt and to itself."""
        out = self.model(answer, state=self.state, pattern=FULL)
        self.state.rollback(self.lengths)
        self.positions += answer.numel()
        self.count(1)
        return out


class BlockCache:
    """Finished blocks' keys/values under block-causal attention, blocks aligned to position 0.

    ``commit(block)`` makes a finished block part of the context; it is fed in front of the next
    :meth:`logits` call (one pass, no extra network call), whose returned logits cover the pending
    block and the block in progress; the pending block's keys/values stay, the rest is rolled back.
    """

    def __init__(self, model, block_size: int, batch_size: int, capacity: int, counter=None, clean_pattern: AttentionPattern | None = None):
        self.model = model
        self.pattern = block_causal(block_size)
        self.clean_pattern = clean_pattern  # e.g. causal: the context attends causally (NBDiff); its own pass
        self.state = CanvasKVCache.like(model.init_state(batch_size, capacity))
        self.kept: tuple[torch.Tensor, int] | None = None  # (lengths before, first slot) of a kept block
        self.pending: torch.Tensor | None = None
        self.pending_valid: torch.Tensor | None = None
        self.positions = 0
        self.count = counter or (lambda n: None)

    def commit(self, block: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        if self.pending is not None:
            self.pending = torch.cat([self.pending, block], 1)
            v = valid if valid is not None else torch.ones_like(block, dtype=torch.bool)
            self.pending_valid = torch.cat([self.pending_valid, v], 1)
        else:
            self.pending = block
            self.pending_valid = valid if valid is not None else torch.ones_like(block, dtype=torch.bool)

    def logits(self, block: torch.Tensor, keep: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits of ``block``, logits of the pending clean tokens or None); one counted pass.

        ``keep``: leave the block's keys/values in the cache (a sub-block cache reuses them through
        :meth:`rows` until :meth:`drop_kept`); otherwise they are rolled back at once.
        """
        self.drop_kept()
        early = self.flush() if self.clean_pattern is not None else None
        before = self.state.lengths.clone()
        pending, pending_valid = self.pending, self.pending_valid
        if pending is None:
            out = self.model(block, state=self.state, pattern=self.pattern)
            clean = None
        else:
            valid = torch.cat([pending_valid, torch.ones_like(block, dtype=torch.bool)], 1)
            both = self.model(torch.cat([pending, block], 1), state=self.state, valid=valid, pattern=self.pattern)
            clean, out = both[:, : pending.shape[1]], both[:, pending.shape[1]:]
            before = before + pending_valid.long().sum(1)
            self.pending = self.pending_valid = None
            self.positions += int(pending_valid.sum())
        if early is not None:
            clean = early
        if keep:
            self.kept = (before, self.state.used - block.shape[1])
        else:
            self.state.rollback(before)
        self.positions += block.numel()
        self.count(1)
        return out, clean

    def rows(self, ids: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Logits of the kept block's ``columns`` recomputed from ``ids`` (their current tokens) against the
        cache, reusing the kept keys/values of the block's other columns (one counted pass)."""
        if self.kept is None:
            raise RuntimeError("rows() needs a block kept by logits(block, keep=True)")
        slots = self.kept[1] + columns.to(self.state.device)
        out = run_slots(self.model, self.state, ids, slots, self.state.pos[:, slots], torch.ones_like(ids, dtype=torch.bool), self.pattern)
        self.positions += ids.numel()
        self.count(1)
        return out

    def drop_kept(self) -> None:
        """Roll a kept block out of the cache."""
        if self.kept is not None:
            self.state.rollback(self.kept[0])
            self.kept = None

    def flush(self) -> torch.Tensor | None:
        """Cache the pending clean tokens now (one counted pass); returns their logits."""
        self.drop_kept()
        if self.pending is None:
            return None
        out = self.model(self.pending, state=self.state, valid=self.pending_valid, pattern=self.clean_pattern or self.pattern)
        self.positions += int(self.pending_valid.sum())
        self.pending = self.pending_valid = None
        self.count(1)
        return out


class StaleCache:
    """Refreshed keys/values of the whole canvas, reused for every column outside the active set.

    ``refresh(canvas)`` runs every position (one pass) and keeps its keys/values;
    ``logits(canvas, columns)`` recomputes only ``columns`` against them (one pass) and returns
    full-width logits in which the other columns hold their logits from the last refresh.
    """

    def __init__(self, model, valid: torch.Tensor, pattern: AttentionPattern = FULL, counter=None):
        self.model = model
        self.valid = valid
        self.pattern = pattern
        self.positions_of = canvas_positions(valid)
        self.cache: CanvasKVCache | None = None
        self.last: torch.Tensor | None = None
        self.positions = 0
        self.refreshes = 0
        self.count = counter or (lambda n: None)

    def refresh(self, canvas: torch.Tensor) -> torch.Tensor:
        B, L = canvas.shape
        self.cache = CanvasKVCache.like(self.model.init_state(B, 2 * L))
        self.cache.next_positions = self.positions_of
        try:
            self.last = self.model(canvas, state=self.cache, valid=self.valid, pattern=self.pattern)
        finally:
            self.cache.next_positions = None
        self.positions += canvas.numel()
        self.refreshes += 1
        self.count(1)
        return self.last

    def logits(self, canvas: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            return self.refresh(canvas)
        fresh = run_columns(self.model, self.cache, canvas, columns, self.positions_of, self.valid, self.pattern)
        out = self.last.clone()
        out[:, columns] = fresh
        self.positions += canvas.shape[0] * int(columns.numel())
        self.count(1)
        return out
