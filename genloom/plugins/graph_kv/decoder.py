"""The Graph-KV decoder: a structured prompt prefilled under a segment graph, then decoded.

One round, as the core loop runs it:

1. **start (prefill).** Each prompt is cut into segments, each ending with ``separator_id``: the
   first ``sources`` segments are source segments, the next ``len(edges)`` are target segments, and
   whatever follows (a question) is the open tail. The decoder builds the row's
   :class:`~genloom.core.pattern.SegmentPattern`: a source reads only itself, target i reads itself
   and the sources listed in ``edges[i]``, the tail reads everything. Positions: every source starts
   at 0 (parallel positional range, so each source's keys/values are exactly those of encoding it
   alone), every target starts after the longest source, the tail continues after the furthest
   target. Rows with different segment lengths get one pattern each (``SegmentRows``). One forward
   pass fills the KV cache under that pattern.
2. **propose / verify.** The next token is chosen from the processed next-token logits (sampled, or
   the argmax with ``greedy``) and committed.
3. **advance.** The token joins the tail: it reads every segment and the tail before it, through
   the cache, at the tail's positions.
"""

from __future__ import annotations

from genloom.core.errors import GenerationError
from genloom.core.generation import Decoder, initial_capacity
from genloom.core.pattern import SegmentPattern, segment_rows, segments


def parse_edges(edges) -> list[list[int]]:
    """``["0", "0,1"]`` -> ``[[0], [0, 1]]`` (an empty string: a target that reads no source)."""
    return [[int(x) for x in str(e).replace(" ", "").split(",") if x != ""] for e in edges]


def split_segments(ids: list[int], separator_id: int) -> tuple[list[int], int]:
    """(lengths of the complete segments, each ending with the separator; length of the rest)."""
    lengths, start = [], 0
    for i, t in enumerate(ids):
        if t == separator_id:
            lengths.append(i + 1 - start)
            start = i + 1
    return lengths, len(ids) - start


def graph_pattern(ids: list[int], separator_id: int, sources: int, edges: list[list[int]]) -> SegmentPattern:
    """The segment graph of one prompt (see the module docstring)."""
    lengths, _ = split_segments(ids, separator_id)
    needed = sources + len(edges)
    if len(lengths) < needed:
        raise GenerationError(f"a graph-kv prompt needs {sources} source and {len(edges)} target segments, each ending with "
                              f"separator id {separator_id}; this prompt has {len(lengths)} (decoder.sources, decoder.edges)")
    lengths = lengths[:needed]
    longest_source = max(lengths[:sources], default=0)
    starts = [0] * sources + [longest_source] * len(edges)
    return segments(lengths, [[] for _ in range(sources)] + edges, within="causal", segment_starts=starts)


class GraphKVDecoder(Decoder):
    exact = None  # a different attention structure from the model's causal reading of the prompt

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.edges = parse_edges(config.edges)
        for i, srcs in enumerate(self.edges):
            bad = [s for s in srcs if not 0 <= s < config.sources]
            if bad:
                raise ValueError(f"edges[{i}] names source {bad[0]}; sources are 0..{config.sources - 1} (decoder.sources)")

    def pattern(self, session):
        rows = []
        for b in range(session.batch_size):
            ids = session.prompt_ids[b][session.prompt_valid[b]].tolist()
            rows.append(graph_pattern(ids, self.config.separator_id, self.config.sources, self.edges))
        return segment_rows(rows)

    def start(self, session):
        pattern = self.pattern(session)
        if not session.model.backbone.supports(pattern):
            raise GenerationError(f"graph-kv needs a backbone that serves segment patterns; {type(session.model.backbone).__name__} "
                                  f"serves {sorted(session.model.backbone.patterns)}")
        session.scratch["pattern"] = pattern
        session.state = session.model.init_state(session.batch_size, initial_capacity(session))
        logits = session.forward(session.prompt_ids, state=session.state, valid=session.prompt_valid, pattern=pattern)
        session.scratch["next_logits"] = logits[:, -1]

    def choose(self, session, logits):
        return logits.argmax(-1) if self.config.greedy else super().choose(session, logits)

    def advance(self, session, commit):
        logits = session.forward(commit.tokens[:, :1], state=session.state, pattern=session.scratch["pattern"])
        session.scratch["next_logits"] = logits[:, -1]


def build(config, ctx):
    return GraphKVDecoder(config, ctx)
