"""The LouisKV retrieval policy, one step of ``retrieve`` for one layer:

1. keep everything (no eviction); with no budget, one covering every held entry, or an advance of
   several tokens (the prefill, draft verification), read all;
2. the first time: cluster the prompt's keys (k-means over the flattened key/value heads) and store
   each prompt entry's cluster in ``Entries.extra["unit"]`` (generated tokens get segment units from
   their positions);
3. trigger: per sequence, ``cos(q, q_last) < threshold`` (or no retrieval yet);
4. on a trigger, score every unit by ``max_heads q . centroid`` and take units in score order while
   they fit in ``budget - local_window``; store the chosen entries in ``extra["retrieved"]``;
5. read: the retrieved entries, the ``local_window`` most recent ones (and the chunk, added by the cache).
"""

from __future__ import annotations

import torch

from genloom.core.cache_policy import CachePolicy, Entries


def kmeans(x: torch.Tensor, valid: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """(B, S) cluster ids of the rows of ``x`` (B, S, D), invalid rows excluded (id 0)."""
    B, S, _ = x.shape
    start = torch.linspace(0, S - 1, k, device=x.device).round().long()
    centroids = x[:, start]  # evenly spaced entries as the initial centroids
    ids = torch.zeros(B, S, dtype=torch.long, device=x.device)
    for _ in range(iters):
        ids = torch.cdist(x, centroids).argmin(-1)
        w = valid.to(x.dtype)[..., None]
        sums = torch.zeros_like(centroids).scatter_add_(1, ids[..., None].expand_as(x), x * w)
        counts = torch.zeros(B, k, 1, dtype=x.dtype, device=x.device).scatter_add_(1, ids[..., None], w)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return torch.where(valid, ids, 0)


class LouisKV(CachePolicy):
    name = "louiskv"

    def __init__(self, budget=None, budget_bytes=None, local_window=32, threshold=0.9, cluster_size=16, segment=16, kmeans_iters=4):
        self.budget, self.budget_bytes = budget, budget_bytes
        self.local_window, self.threshold = local_window, threshold
        self.cluster_size, self.segment, self.kmeans_iters = cluster_size, segment, kmeans_iters

    def retrieve(self, cache, layer, held: Entries, q):
        reads = cache.room(layer, incoming=0)
        if reads is None or q is None or held.size <= reads or cache._last > 1:
            return None  # multi-token advances (the prefill, draft verification) read everything
        if cache.shares(layer):  # a layer reading another's keys reuses its source's retrieval
            kept = held.extra.get("retrieved")
            return None if kept is None else self._read(held, kept.bool(), cache._last)
        B = held.k.shape[0]
        if "unit" not in held.extra:
            held = self._cluster(cache, layer, held)
        rows = cache.rows[layer]
        query = q[:, :, -1].mean(1)  # (B, Dh): the step's last query, averaged over heads
        last = rows.get("last_query")
        if last is None:
            trigger = torch.ones(B, dtype=torch.bool, device=q.device)
        else:
            trigger = torch.nn.functional.cosine_similarity(query, last, dim=-1) < self.threshold
        retrieved = held.extra.get("retrieved", torch.zeros_like(held.valid)).bool()
        if bool(trigger.any()):
            fresh = self._select(held, q[:, :, -1], rows["prompt_length"], reads - min(self.local_window, reads))
            retrieved = torch.where(trigger[:, None], fresh, retrieved)
            cache.stats["retrievals"] = cache.stats.get("retrievals", 0) + int(trigger.sum())
            cache.rows[layer] = {**rows, "last_query": torch.where(trigger[:, None], query, last if last is not None else query)}
            held = Entries(held.k, held.v, held.pos, held.valid, {**held.extra, "retrieved": retrieved.to(torch.long)})
            cache.entries[layer] = held
        return self._read(held, retrieved, cache._last)

    def _read(self, held: Entries, retrieved: torch.Tensor, chunk: int) -> torch.Tensor:
        from_end = held.valid.long().flip(1).cumsum(1).flip(1)  # 1 for the most recent valid entry
        return held.valid & (retrieved | (from_end <= self.local_window + chunk))

    def _cluster(self, cache, layer, held: Entries) -> Entries:
        """Cluster the entries held now (the prompt) and remember how many there are per row."""
        prompt_length = held.pos.masked_fill(~held.valid, -1).amax(1) + 1
        x = held.k.transpose(1, 2).flatten(2).float()  # (B, S, Hkv * Dh)
        k = max(1, -(-held.size // self.cluster_size))
        unit = kmeans(x, held.valid, min(k, held.size), self.kmeans_iters)
        held = Entries(held.k, held.v, held.pos, held.valid, {**held.extra, "unit": unit + 1})  # 0: not a prompt cluster
        cache.entries[layer] = held
        cache.rows[layer] = {**cache.rows[layer], "prompt_length": prompt_length, "clusters": torch.full_like(prompt_length, k)}
        return held

    def _select(self, held: Entries, q: torch.Tensor, prompt_length: torch.Tensor, room: int) -> torch.Tensor:
        """(B, S) entries of the best-scoring units that fit in ``room`` tokens."""
        B, Hkv, S, Dh = held.k.shape
        clusters = int(held.extra["unit"].max()) + 1
        segment_unit = clusters + torch.div(held.pos - prompt_length[:, None], self.segment, rounding_mode="floor").clamp_min(0)
        unit = torch.where(held.extra["unit"] > 0, held.extra["unit"], segment_unit)
        unit = torch.where(held.valid, unit, 0)
        U = int(unit.max()) + 1
        w = held.valid.to(held.k.dtype)
        sums = torch.zeros(B, Hkv, U, Dh, dtype=held.k.dtype, device=held.k.device).scatter_add_(2, unit[:, None, :, None].expand(B, Hkv, S, Dh), held.k * w[:, None, :, None])
        counts = torch.zeros(B, U, dtype=held.k.dtype, device=held.k.device).scatter_add_(1, unit, w)
        centroids = sums / counts[:, None, :, None].clamp_min(1)
        groups = q.shape[1] // Hkv
        scores = torch.einsum("bhd,bhud->bhu", q, centroids.repeat_interleave(groups, dim=1)).amax(1)  # (B, U)
        scores = scores.masked_fill(counts == 0, float("-inf"))
        scores[:, 0] = float("-inf")  # unit 0 only holds invalid entries
        order = scores.argsort(dim=1, descending=True)
        sizes = counts.gather(1, order)
        fits = (sizes.cumsum(1) <= room) & torch.isfinite(scores.gather(1, order))
        chosen = torch.zeros(B, U, dtype=torch.bool, device=q.device).scatter(1, order, fits)
        return chosen.gather(1, unit) & held.valid


def build(config, ctx=None) -> LouisKV:
    return LouisKV(config.budget, config.budget_bytes, config.local_window, config.threshold, config.cluster_size, config.segment, config.kmeans_iters)
