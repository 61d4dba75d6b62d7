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
import threading

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
        from genloom.kernels.attention import attend, masked_scores

        scores, mask, v = masked_scores(q, k, v, pattern=pattern, q_pos=q_pos, kv_pos=kv_pos, kv_valid=kv_valid, scale=scale)
        top_k = getattr(_local, "top_k", None) or self.default_top_k
        if top_k < scores.shape[-1]:
            kth = scores.topk(top_k, dim=-1).values[..., -1:]  # the K-th highest score per query
            scores = scores.masked_fill(scores < kth, float("-inf"))
        return attend(scores, mask, v, q.dtype)


def make_topk_sparse(config=None, ctx=None):
    return TopKSparse()
