"""Synthetic behavioural sequences: item ids with timestamps.

A window of L + 1 events starts at a uniform absolute time in [0, max_offset) and a uniform item.
Gaps are exponential with mean ``mean_gap``. After a gap longer than ``session_gap`` the next item
comes from the home cluster (that of the window's first item); otherwise from the current item's
cluster, or with probability ``drift`` from the cluster after it (items
``c * m .. c * m + m - 1`` form cluster c, with m = n_items / n_clusters). Every window is a
function of (seed, split, index) only.
"""

from __future__ import annotations

import numpy as np
import torch

from genloom.core.data import DataSource
from genloom.plugins.synergen import SyntheticBehaviourConfig


class BehaviourWindows(torch.utils.data.Dataset):
    def __init__(self, config: SyntheticBehaviourConfig, size: int, split_index: int):
        self.config, self.size, self.split_index = config, size, split_index

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        c = self.config
        rng = np.random.default_rng([c.seed, self.split_index, int(i)])
        per = c.n_items // c.n_clusters
        n = c.seq_len + 1
        gaps = rng.exponential(c.mean_gap, n)
        gaps[0] = 0.0
        times = rng.uniform(0.0, c.max_offset) + np.cumsum(gaps)
        items = [int(rng.integers(c.n_items))]
        for k in range(1, n):
            if gaps[k] > c.session_gap:
                cluster = items[0] // per
            else:
                cluster = (items[-1] // per + int(rng.random() < c.drift)) % c.n_clusters
            items.append(cluster * per + int(rng.integers(per)))
        return {"ids": torch.tensor(items, dtype=torch.long), "times": torch.tensor(times, dtype=torch.float32)}


class SyntheticBehaviourData(DataSource):
    SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}

    def __init__(self, config: SyntheticBehaviourConfig):
        self.config = config
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.info = {"modality": "event", "name": "synthetic-behaviour", "seq_len": config.seq_len, "n_items": config.n_items}

    def load(self, split: str, tokenizer=None, ctx=None):
        if split not in self.SPLIT_INDEX:
            raise ValueError(f"unknown split '{split}' (known: train, val, test)")
        size = self.config.train_windows if split == "train" else self.config.eval_windows
        return BehaviourWindows(self.config, size, self.SPLIT_INDEX[split])


def build(config: SyntheticBehaviourConfig, ctx=None) -> SyntheticBehaviourData:
    return SyntheticBehaviourData(config)
