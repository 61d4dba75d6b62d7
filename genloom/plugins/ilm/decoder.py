"""ILM decoding on the shared loop: repeated single insertions until stop.

``start`` splits each prompt into the prefix (the source block from ``generate(source=...)``, or a
plain prompt's first token) and the initial canvas: the rest of the prompt (a target prefix), whose
tokens are infill *constraints*: insertions never remove or reorder a token, so every output
contains them in order. Each round is one forward pass: ``propose`` picks one action per row from
the joint distribution over (slot, token) insertions and stop (argmax with ``greedy``, else a
draw), ``verify`` applies the insertions to the ``genloom.toolkit.anyorder.InsertionCanvas``. A
row ends at stop or when its canvas holds ``max_new_tokens`` tokens; once every row has ended the
canvases are committed (with an end-of-sequence id), so the result holds the whole canvas,
constraints included.
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder
from genloom.toolkit.anyorder import InsertionCanvas

from .head import joint_log_probs


class IlmDecoder(Decoder):
    def start(self, session) -> None:
        source_length = self.ctx.get("source_length") if self.ctx is not None else None
        P = int(source_length) if source_length else 1
        rows = [session.prompt_ids[b, session.prompt_valid[b]].tolist() for b in range(session.batch_size)]
        if any(len(r) < P for r in rows):
            raise GenerationError(f"the ilm decoder reads a prefix of {P} tokens (the source block from generate(source=...)) before the canvas")
        session.scratch.update(prefix=torch.tensor([r[:P] for r in rows], device=session.device), canvas=InsertionCanvas([r[P:] for r in rows]), stopped=[False] * len(rows))

    def propose(self, session):
        s = session.scratch
        session.metrics.count_forward("target")
        pad = session.eos_id if session.eos_id is not None else 0
        log_p = joint_log_probs(session.model, s["prefix"], s["canvas"].tokens, pad)
        if self.config.greedy:
            return log_p.argmax(-1)
        return torch.multinomial((log_p / self.config.temperature).softmax(-1), 1, generator=session.generator).squeeze(-1)

    def verify(self, session, proposal) -> Commit:
        s = session.scratch
        canvas: InsertionCanvas = s["canvas"]
        V = session.model.head.vocab_size
        stop_action = (max(len(t) for t in canvas.tokens) + 1) * V
        insertions = []
        for b, action in enumerate(proposal.tolist()):
            if s["stopped"][b] or action == stop_action:
                s["stopped"][b] = True
                insertions.append({})
            else:
                insertions.append({action // V: [action % V]})
        canvas.step(insertions)
        for b, row in enumerate(canvas.tokens):
            if len(row) >= session.max_new_tokens:
                s["stopped"][b] = True
        if not all(s["stopped"]):
            return Commit(proposal[:, None], torch.zeros_like(proposal))  # nothing is final until every row stopped
        return canvas.finished(session.eos_id, session.device)

    def advance(self, session, commit) -> None:
        if all(session.scratch["stopped"]):
            session.finished[:] = True


def build(config, ctx):
    return IlmDecoder(config, ctx)
