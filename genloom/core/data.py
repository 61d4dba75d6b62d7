"""The data contract: a data-set component builds a :class:`DataSource`.

``DataSource.load(split, tokenizer, ctx)`` returns a ``torch.utils.data.Dataset`` of dict
samples for ``split`` in ``("train", "val", "test")``; ``info`` publishes derived values into the
build context (modality, number of variates, image size...). :class:`TokenWindows` is the shared
helper for token streams (text, code, any sequence of ids).

Source-conditioned data (sequence to sequence) publishes ``source_length`` (and
``target_length``) in ``info`` and its config's ``bind``; its samples are
:class:`SourceTargetPairs` (a fixed-length source block, then the target). The model reads the
source under the ``prefix(source_length)`` attention pattern, and generation takes the source as
the block the decoding starts after (:func:`source_block`). See "Conditional generation" in
docs/plugin-guide.md.
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


# -- source-conditioned examples (sequence to sequence) ------------------------------------------
def pad_id_of(tokenizer) -> int:
    """The id that pads a source block and a target: the tokenizer's (first) end-of-sequence id, else 0."""
    eos = getattr(tokenizer, "eos_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return int(eos) if eos is not None else 0


def source_block(source, source_length: int, pad_id: int) -> list[int]:
    """The source as the model sees it: left-padded with ``pad_id`` to exactly ``source_length`` ids.

    Every conditioned model reads its source as one block of fixed length at positions
    ``0 .. source_length - 1`` (attended bidirectionally under ``prefix(source_length)``); the
    target starts at position ``source_length``. The padding ids are ordinary inputs (the model
    learns to ignore them), so no validity mask is needed and every kernel serves the layout.
    """
    source = [int(t) for t in source]
    if len(source) > source_length:
        raise ValueError(f"the source has {len(source)} tokens but the model's source block holds {source_length} (source_length)")
    return [int(pad_id)] * (source_length - len(source)) + source


class SourceTargetPairs(torch.utils.data.Dataset):
    """(source, target) pairs laid out for a prefix-LM: ``[source block | target, eos, padding]``.

    Samples are ``{"ids": (S+T,), "mask": (S+T-1,), "source_length": ()}`` with ``S`` the source
    block length and ``T`` the target length including its end-of-sequence id. ``ids[:-1]`` are
    the inputs and ``ids[1:]`` the targets (the next-token layout of :class:`TokenWindows`);
    ``mask`` is True exactly at the target tokens and their end-of-sequence id, so an objective
    that scores ``mask`` scores the target only. Objectives that handle the target otherwise (a
    non-autoregressive decoder) slice ``ids[:, :S]`` (source) and ``ids[:, S:]`` (target).
    ``pairs`` keeps the raw (source ids, target ids) for exact-match evaluation.
    """

    def __init__(self, pairs, source_length: int, target_length: int, *, pad_id: int, eos_id: int):
        self.pairs = [(list(s), list(t)) for s, t in pairs]
        self.source_length, self.target_length = source_length, target_length
        self.pad_id, self.eos_id = pad_id, eos_id
        for i, (s, t) in enumerate(self.pairs):
            if len(s) > source_length or len(t) + 1 > target_length:
                raise ValueError(f"pair {i} ({len(s)} source, {len(t)} target tokens) does not fit source_length={source_length}, target_length={target_length} (the target needs one more id for end-of-sequence)")

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        source, target = self.pairs[i]
        S, T = self.source_length, self.target_length
        ids = torch.full((S + T,), self.pad_id, dtype=torch.long)
        ids[:S] = torch.tensor(source_block(source, S, self.pad_id), dtype=torch.long)
        ids[S : S + len(target) + 1] = torch.tensor(target + [self.eos_id], dtype=torch.long)
        mask = torch.zeros(S + T - 1, dtype=torch.bool)
        mask[S - 1 : S + len(target)] = True  # input position S-1+k predicts target token k
        return {"ids": ids, "mask": mask, "source_length": torch.tensor(S)}
