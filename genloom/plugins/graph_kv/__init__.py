"""Graph-KV: breaking sequence via injecting structural biases into large language models
(Wang et al., 2025).

What the paper does. Instead of serialising retrieved passages or the nodes of a graph into one
flat sequence, Graph-KV treats the KV cache of each text segment as its condensed representation
and lets the structure decide who reads whom: *source* segments are encoded independently, in
a shared positional range, and each *target* segment attends only to the KV caches of its
designated sources (a graph-structured block mask, one message-passing step inside the LLM); the
question then reads everything. Placing the sources in parallel positions reduces positional
bias and context-window use.

What this implementation does. The structure is a value of the core's attention-pattern type:
:class:`~genloom.core.pattern.SegmentPattern` (one per row, ``SegmentRows``), served by every
attention backend and by any backbone that serves patterns (the baseline transformer). The
``graph-kv`` decoder (:mod:`.decoder`) cuts each prompt into segments at ``separator_id``, takes
the first ``sources`` as sources and the next ``len(edges)`` as targets (target i reads the
sources in ``edges[i]``), gives every source the positions 0.. and every target the positions
after the longest source, prefills the KV cache under that graph in one pass and decodes the
answer as the open tail, which reads every segment.

What it simplifies. No fine-tuning recipe (the paper adapts an instruction-tuned LLM); the
sources' KV is computed in the same prefill as the rest rather than stored across requests
(it is identical: the tests compare it with standalone encoding); one message-passing step
(targets read sources, not other targets); a tiny byte-level model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeInt

PAPER = records.Paper(title="Graph-KV: Breaking Sequence via Injecting Structural Biases into Large Language Models", year=2025, arxiv="2506.07334")


@dataclass
class GraphKVConfig:
    """Decode after a prefill under a segment graph (sources, targets reading chosen sources, a tail)."""

    separator_id: NonNegativeInt = 10
    """The token that ends a segment (10: a newline in the byte tokenizer)."""
    sources: NonNegativeInt = 2
    """Leading segments that are sources (encoded independently, positions from 0)."""
    edges: list[str] = field(default_factory=list)
    """Per target segment after the sources, the sources it reads, comma-separated (``["0", "0,1"]``)."""
    greedy: bool = False
    """Pick the most likely token instead of sampling."""

    def __post_init__(self):
        for i, e in enumerate(self.edges):
            try:
                [int(x) for x in str(e).replace(" ", "").split(",") if x != ""]
            except ValueError:
                raise ValueError(f"edges[{i}] must be comma-separated source indices like '0,2', got '{e}'") from None


@hookimpl
def genloom_decoders():
    return [
        records.decoder(
            "graph-kv",
            "genloom.plugins.graph_kv.decoder:build",
            GraphKVConfig,
            "Graph-KV: sources encoded independently in a shared positional range, targets read only their sources' KV, the answer reads all.",
            PAPER,
        )
    ]
