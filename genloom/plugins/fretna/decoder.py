"""FReTNA decoding on the shared loop: a source revealed ``update_every`` tokens at a time.

``start`` recovers each row's source from its block (the left padding stripped) and builds the NAT
decoder named by the config through the registry (``nat-ctc``). The rounds then play the stream:
each ``propose`` reveals the next ``update_every`` source tokens of every row whose source is not
complete and re-translates all of them with one batched NAT pass (:class:`Retranslator`); rows
already complete keep their translation and cost nothing. When every source is complete the
final translations are committed. Metrics: ``forward_passes`` (one per round),
``extra["source_updates"]`` (re-translations per row), ``extra["erasure"]`` (tokens erased over
all updates, per row) and ``extra["partials"]`` (every partial translation, per row).
"""

from __future__ import annotations

import math

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder

from .retranslate import Retranslator, erasure


class FretnaDecoder(Decoder):
    def start(self, session) -> None:
        ctx = self.ctx
        S = ctx.get("source_length") if ctx is not None else None
        if not S or session.prompt_ids.shape[1] != S or not bool(session.prompt_valid.all()):
            raise GenerationError(f"the fretna decoder reads exactly one source block of source_length={S} tokens per sequence: call generate(source=...) without a target prefix")
        nat = ctx.build("decoder", self.config.nat, path="decoder.nat")
        streams, sources = [], []
        for row in session.prompt_ids.tolist():
            pad = Retranslator(session.model, nat, max_new_tokens=session.max_new_tokens, eos_id=session.eos_ids).pad
            start = next((i for i, t in enumerate(row) if t != pad), len(row))
            sources.append(row[start:])
            streams.append(Retranslator(session.model, nat, max_new_tokens=session.max_new_tokens, eos_id=session.eos_ids))
        session.scratch.update(streams=streams, sources=sources, partials=[[] for _ in streams], erased=[0] * len(streams))

    def propose(self, session):
        s = session.scratch
        k = self.config.update_every
        active = [b for b, st in enumerate(s["streams"]) if len(st.source) < len(s["sources"][b]) or (not st.source and not s["partials"][b])]
        if active:
            session.metrics.count_forward("target")
            chunks = [s["sources"][b][len(s["streams"][b].source) : len(s["streams"][b].source) + k] for b in active]
            outs = Retranslator.update_many([s["streams"][b] for b in active], chunks)
            for b, out in zip(active, outs):
                if s["partials"][b]:
                    s["erased"][b] += erasure(s["partials"][b][-1], out)
                s["partials"][b].append(out)
        return all(len(st.source) >= len(src) and s["partials"][b] for b, (st, src) in enumerate(zip(s["streams"], s["sources"])))

    def verify(self, session, complete) -> Commit:
        s = session.scratch
        zeros = torch.zeros(session.batch_size, dtype=torch.long, device=session.device)
        if not complete:
            return Commit(zeros[:, None], zeros)  # the stream is not over: nothing is final
        session.metrics.extra.update(source_updates=[len(p) for p in s["partials"]], erasure=list(s["erased"]), partials=s["partials"])
        return Commit.sequences([p[-1] for p in s["partials"]], session.eos_id, session.device)

    def advance(self, session, commit) -> None:
        if all(len(st.source) >= len(src) and p for st, src, p in zip(session.scratch["streams"], session.scratch["sources"], session.scratch["partials"])):
            session.finished[:] = True


def updates_for(source_tokens: int, update_every: int) -> int:
    """Re-translations of a source of ``source_tokens`` revealed ``update_every`` at a time (at least one)."""
    return max(1, math.ceil(source_tokens / update_every))


def build(config, ctx):
    return FretnaDecoder(config, ctx)
