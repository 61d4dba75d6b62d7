"""The ``attention`` op's ``topk-sparse`` backend: each query attends to its top-K keys only.

Scores are computed like the ``reference`` backend's (same masking by the pattern and validity);
then, per query, every allowed key outside the K highest scores is masked out before the softmax.
With K at least the number of allowed keys it is the reference exactly. The budget K is set per
thread with :func:`budget` (the ``sparse-to-dense`` decoder sets it around its draft passes); the
backend has the lowest priority, so the dispatcher never picks it unless it is forced
(``kernels.use("attention", "topk-sparse")``).
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch

from genloom.core.pattern import CAUSAL, AttentionPattern

_local = threading.local()


@contextlib.contextmanager
def budget(top_k: int):
    """Within the block, ``topk-sparse`` attention keeps ``top_k`` keys per query (this thread)."""
    before = getattr(_local, "top_k", None)
    _local.top_k = int(top_k)
    try:
        yield
    finally:
        _local.top_k = before


class TopKSparse:
    name = "topk-sparse"

    def __init__(self, default_top_k: int = 8):
        self.default_top_k = default_top_k

    def supports(self, **_) -> str | None:
        return None

    def __call__(self, q, k, v, *, pattern: AttentionPattern = CAUSAL, q_pos=None, kv_pos=None, kv_valid=None, scale=None):
        from genloom.kernels.attention import dense_mask

        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        work = torch.promote_types(q.dtype, torch.float32)
        scores = torch.matmul(q.to(work), k.to(work).transpose(-1, -2)) * scale
        mask = dense_mask(pattern, q, k, q_pos, kv_pos, kv_valid)
        scores = scores.masked_fill(~mask, float("-inf"))
        top_k = getattr(_local, "top_k", None) or self.default_top_k
        if top_k < scores.shape[-1]:
            kth = scores.topk(top_k, dim=-1).values[..., -1:]  # the K-th highest score per query
            scores = scores.masked_fill(scores < kth, float("-inf"))
        empty = ~mask.any(-1, keepdim=True)
        probs = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
        return torch.matmul(probs, v.to(work)).to(q.dtype)


def make_topk_sparse(config=None, ctx=None):
    return TopKSparse()
