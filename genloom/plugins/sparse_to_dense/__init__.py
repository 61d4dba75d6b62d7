"""Sparse-to-Dense (StD): lossless self-speculative decoding with top-K sparse attention drafts.

What the paper does. During decoding, a long-context model's attention is concentrated on a few
keys: attending to the top-K keys of the KV cache alone predicts the next token almost as well.
StD uses the same model twice: a sparse module (top-K attention over the KV cache) drafts several
tokens fast, and the dense module (full attention) verifies them in one parallel pass, so the
output is the dense model's, with no draft model and no fine-tuning (video LLMs with very long
visual contexts in the paper).

What this implementation does.

- ``sparse_attention.py``: a ``topk-sparse`` backend of the core ``attention`` op: each query keeps
  its ``top_k`` highest-scoring allowed keys (the reference math otherwise); lowest priority, used
  only when forced, with a per-thread budget.
- decoder ``sparse-to-dense``: ``gamma`` greedy draft passes with the attention op forced to
  ``topk-sparse`` on the shared KV cache (then rolled back), one dense verification pass, greedy
  acceptance: the output equals dense greedy decoding token for token. Any backbone whose
  attention goes through the kernel dispatcher (the transformer) works.

What it simplifies. Text-only toy models instead of video LLMs; the sparse pass computes every
score and masks all but the top K (the saving in the paper comes from reading only K cached keys);
greedy only (no sampling verification); no logits processors.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

_P = "genloom.plugins.sparse_to_dense"

PAPER = records.Paper(
    title="Sparse-to-Dense: A Free Lunch for Lossless Acceleration of Video Understanding in LLMs",
    year=2025,
    arxiv="2505.19155",
)


@dataclass
class SparseToDenseConfig:
    """Self-speculative decoding: a top-K sparse attention draft, dense verification."""

    gamma: int = 4
    """Tokens drafted by the sparse model per round (the dense pass verifies gamma + 1 positions)."""
    top_k: int = 8
    """Keys each query attends to in the sparse draft passes."""

    def __post_init__(self):
        if isinstance(self.gamma, bool) or self.gamma < 1:
            raise ValueError(f"gamma must be at least 1, got {self.gamma}")
        if isinstance(self.top_k, bool) or self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "sparse-to-dense",
            f"{_P}.decoder:build",
            SparseToDenseConfig,
            "Sparse-to-Dense: the model drafts with top-K sparse attention and verifies with dense attention (greedy, exact).",
            PAPER,
        )
    ]


@hookimpl
def genloom_kernels():
    return [
        records.kernel("attention", "topk-sparse", f"{_P}.sparse_attention:make_topk_sparse",
                       summary="Top-K sparse attention (each query keeps its K best keys); used only when forced.", paper=PAPER, priority=-100)
    ]
