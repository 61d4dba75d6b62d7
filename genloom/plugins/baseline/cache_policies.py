"""The reference KV-cache policies: the full cache and a sliding window with attention sinks.

``window`` keeps, per sequence and layer, the ``sinks`` earliest held tokens and the most recent
ones, so that after each advance a layer holds at most ``budget`` tokens (the tokens of the advance
itself always stay). Keeping the first tokens follows the observation that attention parks mass on
them; it is the simple baseline every other policy is compared with (benchmarks/kv_policies.py).
"""

from __future__ import annotations

import torch

from genloom.core.cache_policy import CachePolicy, FullPolicy


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


def build_full(config=None, ctx=None) -> CachePolicy:
    return FullPolicy()


def build_window(config, ctx=None) -> WindowPolicy:
    return WindowPolicy(config.budget, config.budget_bytes, config.sinks)
