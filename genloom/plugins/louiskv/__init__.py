"""LouisKV: semantic-aware KV cache retrieval for long inputs and outputs (2025).

What the paper does. KV retrieval keeps the whole cache (offloaded) and lets each decoding step
attend to a small set of critical entries. LouisKV observes that the critical entries change little
from one step to the next (temporal locality), so it retrieves only at *semantic boundaries*: when
the current query's similarity to the query of the last retrieval drops below a threshold; between
boundaries the retrieved set is reused. Retrieval units follow the attention patterns: the prompt's
keys are grouped into semantic clusters (k-means), the generated tokens into temporal segments; a
unit is scored by its representative key against the query and the best units fill the budget,
beside a local window of the most recent tokens.

What this implementation does. Cache policy ``louiskv`` (a retrieval policy: nothing is evicted, the
attention of each step reads a subset, ``CachePolicy.retrieve``). Per layer and sequence: the
prompt's keys (the entries held at the first retrieval) are clustered by k-means on the keys of all
key/value heads; generated tokens form segments of ``segment`` positions; each unit is scored by
``max over heads of q . mean key of the unit`` for the step's last query; units in score order fill
``budget - local_window`` tokens; the ``local_window`` most recent tokens and the current chunk are
always read; advances of several tokens (the prefill) read everything. A retrieval runs when ``cos(q, q_last_retrieval) < threshold`` (per sequence), else the
retrieved set is reused; ``cache.stats["retrievals"]`` counts them. With no budget, or one covering
every held entry, every step reads everything: exactly full attention.

What it simplifies. The full cache stays in the same memory (no CPU offload or transfer), so the
saving is in what attention reads, counted in entries, not in bytes held; no custom kernels; the
query summary is the mean over heads of the step's last query.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveInt, Probability

_P = "genloom.plugins.louiskv"

PAPER = records.Paper(title="LouisKV: Efficient KV Cache Retrieval for Long Input-Output Sequences", year=2025, arxiv="2510.11292")


@dataclass
class LouisKVConfig:
    """Semantic-aware retrieval: reuse the retrieved entries until the query moves away."""

    budget: PositiveInt | None = None
    """Entries each step's attention reads per sequence and layer (local window included; None: all)."""
    budget_bytes: PositiveInt | None = None
    """The same budget in bytes of keys/values per sequence, all layers together."""
    local_window: PositiveInt = 32
    """Most recent tokens always read (the output side's temporal locality)."""
    threshold: Probability = 0.9
    """Retrieve again when the cosine similarity of the query to the last retrieval's falls below this."""
    cluster_size: PositiveInt = 16
    """Prompt keys per semantic cluster on average (k = ceil(prompt / cluster_size))."""
    segment: PositiveInt = 16
    """Generated tokens per temporal segment (a retrieval unit)."""
    kmeans_iters: PositiveInt = 4
    """Lloyd iterations of the prompt clustering."""


@hookimpl
def genloom_components():
    return [records.Component(kind="cache_policy", name="louiskv", factory=f"{_P}.policy:build", config=LouisKVConfig,
                              summary="LouisKV: retrieve clustered prompt keys and output segments only at semantic boundaries.", paper=PAPER)]
