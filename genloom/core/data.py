"""The data contract: a data-set component builds a :class:`DataSource`.

``DataSource.load(split, tokenizer, ctx)`` returns a ``torch.utils.data.Dataset`` of dict
samples for ``split`` in ``("train", "val", "test")``; ``info`` publishes derived values into the
build context (modality, number of variates, image size...). :class:`TokenWindows` is the shared
helper for token streams (text, code, any sequence of ids).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

SPLITS = ("train", "val", "test")


class DataSource:
    """Base class of data-set components."""

    info: dict[str, Any] = {}
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 0

    def load(self, split: str, tokenizer, ctx) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def collate(self, samples):
        return torch.utils.data.default_collate(samples)


class TokenWindows(torch.utils.data.Dataset):
    """Windows of ``seq_len + 1`` ids over a token stream (stride ``seq_len``).

    Samples are ``{"ids": (seq_len+1,), "mask": (seq_len,), "target_bytes": ()}``. With
    ``keep_tail`` the final partial window is kept, padded, with its padding masked out, so that
    evaluation scores every token exactly once.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, token_bytes: np.ndarray | None = None, keep_tail: bool = False, pad_id: int = 0):
        self.stream = torch.as_tensor(np.asarray(stream, dtype=np.int64))
        self.seq_len = seq_len
        self.token_bytes = torch.as_tensor(token_bytes, dtype=torch.float64) if token_bytes is not None else None
        n_targets = max(len(self.stream) - 1, 0)
        full = n_targets // seq_len
        self.n = full + (1 if keep_tail and n_targets % seq_len else 0)
        self.pad_id = pad_id

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        start = i * self.seq_len
        chunk = self.stream[start : start + self.seq_len + 1]
        valid = len(chunk) - 1
        ids = torch.full((self.seq_len + 1,), self.pad_id, dtype=torch.long)
        ids[: len(chunk)] = chunk
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[:valid] = True
        out = {"ids": ids, "mask": mask}
        if self.token_bytes is not None:
            out["target_bytes"] = self.token_bytes[ids[1:]][mask].sum().float()
        return out
