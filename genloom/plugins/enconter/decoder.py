"""ENCONTER decoding: parallel insertions into every open slot, entity spans kept whole.

``start`` splits each prompt into the prefix (the source block from ``generate(source=...)``, or
a plain prompt's first token) and the entity constraints: the rest of the prompt, spans separated
by the end-of-sequence id (``[source] + span1 + [eos] + span2``). The initial canvas is the spans
in order, with the slots inside each span locked (entity-span-aware inference). Each round is one
forward pass: every open slot picks a token or *no insertion* (argmax with ``greedy``, else a
draw) and all insertions are applied at once (``InsertionCanvas.step``). A row ends when no slot
inserts, or when its canvas holds ``max_new_tokens`` tokens (insertions beyond the budget are
dropped right to left); once every row has ended the canvases are committed.
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder
from genloom.toolkit.anyorder import InsertionCanvas

from .head import slot_log_probs


def parse_constraints(tokens: list[int], separator: int) -> list[list[int]]:
    """The entity spans of a constraint list (spans separated by ``separator``; empty spans dropped)."""
    spans, current = [], []
    for t in tokens:
        if t == separator:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(t)
    if current:
        spans.append(current)
    return spans


class EnconterDecoder(Decoder):
    def start(self, session) -> None:
        source_length = self.ctx.get("source_length") if self.ctx is not None else None
        P = int(source_length) if source_length else 1
        rows = [session.prompt_ids[b, session.prompt_valid[b]].tolist() for b in range(session.batch_size)]
        if any(len(r) < P for r in rows):
            raise GenerationError(f"the enconter decoder reads a prefix of {P} tokens (the source block from generate(source=...)) before the constraints")
        separator = session.eos_id if session.eos_id is not None else 0
        spans = [parse_constraints(r[P:], separator) for r in rows]
        canvas = InsertionCanvas([[t for span in row for t in span] for row in spans])
        for b, row in enumerate(spans):
            start = 0
            for span in row:
                canvas.lock_inside(b, start, start + len(span))
                start += len(span)
        session.scratch.update(prefix=torch.tensor([r[:P] for r in rows], device=session.device), canvas=canvas, done=[False] * len(rows))

    def propose(self, session):
        s = session.scratch
        session.metrics.count_forward("target")
        pad = session.eos_id if session.eos_id is not None else 0
        log_p = slot_log_probs(session.model, s["prefix"], s["canvas"].tokens, s["canvas"].locked, pad)
        if self.config.greedy:
            return log_p.argmax(-1)
        flat = (log_p / self.config.temperature).softmax(-1).flatten(0, 1)
        return torch.multinomial(flat, 1, generator=session.generator).view(log_p.shape[:2])

    def verify(self, session, proposal) -> Commit:
        s = session.scratch
        canvas: InsertionCanvas = s["canvas"]
        none = session.model.head.vocab_size
        insertions = []
        for b, row in enumerate(proposal.tolist()):
            room = session.max_new_tokens - len(canvas.tokens[b])
            chosen = {} if s["done"][b] else {k: [v] for k, v in enumerate(row[: canvas.slots(b)]) if v != none and k not in canvas.locked[b]}
            chosen = dict(list(chosen.items())[: max(room, 0)])
            if not chosen:
                s["done"][b] = True
            insertions.append(chosen)
        canvas.step(insertions)
        for b, row in enumerate(canvas.tokens):
            if len(row) >= session.max_new_tokens:
                s["done"][b] = True
        zeros = torch.zeros(session.batch_size, dtype=torch.long, device=session.device)
        if not all(s["done"]):
            return Commit(zeros[:, None], zeros)  # nothing is final until every row has ended
        return canvas.finished(session.eos_id, session.device)

    def advance(self, session, commit) -> None:
        if all(session.scratch["done"]):
            session.finished[:] = True


def build(config, ctx):
    return EnconterDecoder(config, ctx)
