"""The reference KV-cache policies: the full cache, a sliding window with attention sinks, and two
attention-score eviction policies (heavy hitters and observation-window votes).

``window`` keeps, per sequence and layer, the ``sinks`` earliest held tokens and the most recent
ones, so that after each advance a layer holds at most ``budget`` tokens (the tokens of the advance
itself always stay). Keeping the first tokens follows the observation that attention parks mass on
them; it is the simple baseline every other policy is compared with (benchmarks/kv_policies.py).

``heavy-hitter`` (H2O, arXiv 2306.14048) and ``snapkv`` (arXiv 2404.14469) score the held entries
with the attention probabilities the queries actually give them, computed with the reference
definition (:func:`genloom.kernels.attention.masked_scores`: scaled dot products, causal by position,
invalid keys masked, softmax over the keys a layer holds). One advance of a layer, in the cache's
order (:mod:`genloom.core.cache_policy`):

1. ``evict`` (the entries held from earlier advances): keep the ``sinks`` earliest, the most recent
   ones, and the best-scored of the rest, within ``cache.room(layer)``;
2. the cache appends the chunk (new entries start with score 0);
3. ``retrieve`` (every held entry is read): score the entries with this advance's queries and store
   the scores in ``Entries.extra`` (:meth:`~genloom.core.cache_policy.ManagedKVCache.annotate`), so
   they are gathered, reordered, rolled back and snapshotted with their entries.

Heavy hitters accumulate: an entry's score is the attention mass every query so far put on it,
summed over query heads (``extra["attention_mass"]``); with ``decay`` < 1 the mass of earlier
advances fades (score <- decay * score + this advance's mass; 0 keeps only the latest queries'
attention, as TOVA, arXiv 2401.06104, does). SnapKV votes: an entry's score is the
attention of the last ``window`` queries (the observation window, kept per row in
``cache.rows[layer]``), pooled over ``kernel`` neighbouring entries per head, summed over heads
(``extra["votes"]``), recomputed at every advance. Both select per sequence and layer, shared by
the layer's key/value heads (the papers select per head; the managed cache holds one set of
entries per layer).
"""

from __future__ import annotations

import torch

from genloom.core.cache_policy import CachePolicy, Entries, FullPolicy
from genloom.kernels.attention import masked_scores


class WindowPolicy(CachePolicy):
    name = "window"

    def __init__(self, budget: int | None = None, budget_bytes: int | None = None, sinks: int = 4):
        self.budget, self.budget_bytes, self.sinks = budget, budget_bytes, sinks

    def evict(self, cache, layer, held, q):
        room = cache.room(layer)
        if room is None:
            return None
        valid = held.valid
        rank = valid.long().cumsum(1) - 1  # 0 for the earliest held token of the row
        from_end = valid.long().sum(1, keepdim=True) - 1 - rank
        sinks = min(self.sinks, room)
        return valid & ((rank < sinks) | (from_end < room - sinks))


def attention_probabilities(q: torch.Tensor, held: Entries, q_pos: torch.Tensor, q_valid: torch.Tensor) -> torch.Tensor:
    """(B, Hq, L, S) softmax attention of the queries ``q`` (B, Hq, L, Dh) at positions ``q_pos`` over
    the ``held`` entries, causal by position, the reference's definition; rows of invalid queries
    (padding) and of queries with no allowed key are zero."""
    scores, mask, _ = masked_scores(q, held.k, held.v, q_pos=q_pos, kv_pos=held.pos, kv_valid=held.valid)
    empty = ~mask.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return probs * q_valid[:, None, :, None].to(probs.dtype)


def keep_scored(held: Entries, score: torch.Tensor, room: int, sinks: int, recent: int) -> torch.Tensor:
    """(B, S) keep mask: the ``sinks`` earliest valid entries, the ``recent`` latest ones, and the
    best-``score`` of the others, ``room`` entries in all per row (everything when it fits)."""
    valid = held.valid
    rank = valid.long().cumsum(1) - 1
    from_end = valid.long().sum(1, keepdim=True) - 1 - rank
    sinks = min(sinks, room)
    recent = min(recent, room - sinks)
    fixed = valid & ((rank < sinks) | (from_end < recent))
    others = valid & ~fixed
    free = room - sinks - recent
    order = score.masked_fill(~others, float("-inf")).argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    return fixed | (others & (order < free))


class ScoredPolicy(CachePolicy):
    """Shared by the attention-score policies: evict by the stored per-entry score, score in ``retrieve``."""

    key = "score"
    sinks = 0

    def recent(self, room: int) -> int:
        raise NotImplementedError

    def scores(self, cache, layer: int, held: Entries) -> torch.Tensor | None:
        """The per-entry scores ``held`` carries (None before any were computed)."""
        return held.extra.get(self.key)

    def store(self, cache, layer: int, held: Entries, scores: torch.Tensor) -> None:
        cache.annotate(layer, **{self.key: scores})

    def evict(self, cache, layer, held, q):
        room = cache.room(layer)
        if room is None or bool((held.valid.sum(1) <= room).all()):
            return None
        score = self.scores(cache, layer, held)
        if score is None:
            score = torch.zeros(held.valid.shape, device=held.valid.device)
        return keep_scored(held, score, room, self.sinks, self.recent(room))


class HeavyHitterPolicy(ScoredPolicy):
    """H2O: the recent window plus the entries with the largest accumulated attention mass."""

    name = "heavy-hitter"
    key = "attention_mass"

    def __init__(self, budget: int | None = None, budget_bytes: int | None = None, recent_fraction: float = 0.5, sinks: int = 0, decay: float = 1.0):
        self.budget, self.budget_bytes, self.recent_fraction, self.sinks, self.decay = budget, budget_bytes, recent_fraction, sinks, decay

    def recent(self, room: int) -> int:
        return int(round(self.recent_fraction * room))

    def retrieve(self, cache, layer, held, q):
        if q is None or (self.budget is None and self.budget_bytes is None):
            return None  # no budget: nothing will be evicted, the scores are not needed
        positions, valid = cache.chunk
        mass = attention_probabilities(q, held, positions, valid).sum(dim=(1, 2))  # (B, S)
        before = self.scores(cache, layer, held)
        if before is not None:
            mass = mass + self.decay * before.to(mass.dtype)
        self.store(cache, layer, held, mass)
        return None


class SnapKVPolicy(ScoredPolicy):
    """SnapKV: the observation window's queries vote for the entries to keep (pooled per head)."""

    name = "snapkv"
    key = "votes"

    def __init__(self, budget: int | None = None, budget_bytes: int | None = None, window: int = 32, kernel: int = 7,
                 pooling: str = "max", sinks: int = 0):
        self.budget, self.budget_bytes, self.window, self.kernel, self.pooling, self.sinks = budget, budget_bytes, window, kernel, pooling, sinks

    def recent(self, room: int) -> int:
        return self.window

    def observation(self, cache, layer: int, q: torch.Tensor):
        """The last ``window`` queries of the stream (B, Hq, W, Dh), their positions and validity (B, W):
        the stored ones of earlier advances that still stand (not rolled back) then this chunk's."""
        positions, valid = cache.chunk
        rows = cache.rows[layer]
        if "window_q" in rows and rows["window_q"].shape[1] == q.shape[1]:
            start = positions.masked_fill(~valid, torch.iinfo(positions.dtype).max).amin(1, keepdim=True)
            kept = rows["window_valid"] & (rows["window_pos"] < start)  # queries of rolled-back tokens drop out
            q = torch.cat([rows["window_q"].to(q.dtype), q], 2)
            positions, valid = torch.cat([rows["window_pos"], positions], 1), torch.cat([kept, valid], 1)
        # the last `window` valid queries of each row (a stable sort moves the invalid ones first)
        order = torch.sort(valid.int(), dim=1, stable=True).indices[:, -self.window:]
        q = q.gather(2, order[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3]))
        positions, valid = positions.gather(1, order), valid.gather(1, order)
        cache.rows[layer] = {**rows, "window_q": q, "window_pos": positions, "window_valid": valid}
        return q, positions, valid

    def pool(self, votes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Pool (B, H, S) votes over ``kernel`` neighbouring held entries (invalid entries excluded)."""
        if self.kernel == 1:
            return votes
        B, H, S = votes.shape
        pad = self.kernel // 2
        flat = votes.reshape(B * H, 1, S)
        if self.pooling == "max":
            flat = flat.masked_fill(~valid.repeat_interleave(H, 0)[:, None], float("-inf"))
            pooled = torch.nn.functional.max_pool1d(flat, self.kernel, stride=1, padding=pad)
        else:
            pooled = torch.nn.functional.avg_pool1d(flat, self.kernel, stride=1, padding=pad, count_include_pad=False)
        return pooled[..., :S].reshape(B, H, S).masked_fill(~valid[:, None], 0.0)

    def retrieve(self, cache, layer, held, q):
        if q is None or (self.budget is None and self.budget_bytes is None):
            return None
        window_q, window_pos, window_valid = self.observation(cache, layer, q)
        votes = self.pool(attention_probabilities(window_q, held, window_pos, window_valid).sum(2), held.valid).sum(1)  # (B, S)
        if cache.shares(layer):  # a layer reading another's entries adds its votes to the source's
            votes = votes + self.scores(cache, layer, held).to(votes.dtype)
        self.store(cache, layer, held, votes)
        return None


STORAGE = {"model": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float8": torch.float8_e4m3fn}
"""The ``storage`` config values and the dtypes the cache then holds keys/values in."""


def stored(policy: CachePolicy, config) -> CachePolicy:
    policy.storage_dtype = STORAGE[config.storage]
    return policy


def build_full(config=None, ctx=None) -> CachePolicy:
    return FullPolicy()


def build_window(config, ctx=None) -> WindowPolicy:
    return stored(WindowPolicy(config.budget, config.budget_bytes, config.sinks), config)


def build_heavy_hitter(config, ctx=None) -> HeavyHitterPolicy:
    return stored(HeavyHitterPolicy(config.budget, config.budget_bytes, config.recent_fraction, config.sinks, config.decay), config)


def build_snapkv(config, ctx=None) -> SnapKVPolicy:
    return stored(SnapKVPolicy(config.budget, config.budget_bytes, config.window, config.kernel, config.pooling, config.sinks), config)
