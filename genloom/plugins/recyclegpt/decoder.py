"""RecycleGPT decoding on the core's propose/verify/commit loop.

``start`` runs the prompt through the full stack (pass 1) and keeps the last hidden state ``h``.
Each round proposes two tokens: ``y1`` from the full model's logits ``head(h)``, then ``y2`` from
the recyclable module ``head.recycle_logits(h, y1)`` (no backbone call). Both are committed, and
``advance`` feeds ``[y1, y2]`` through the full stack in one pass with the KV cache, giving the
next ``h``. The shared loop stops before the last ``advance``, so n generated tokens cost
``ceil(n / 2)`` full-stack passes (counted as ``target``) and ``floor(n / 2)`` recycled steps
(counted as ``recycle``; none is run when every sequence has one token left).
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder, Session, initial_capacity
from genloom.core.pattern import CAUSAL


class RecycleDecoder(Decoder):
    """Alternate a full-stack step and a recycled step."""

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.greedy = config.greedy

    def _head(self, session: Session):
        head = session.model.head
        if not hasattr(head, "recycle_logits"):
            raise TypeError("the recyclegpt decoder needs the 'recyclegpt' head (it owns the recyclable module)")
        return head

    def _hidden(self, session: Session, ids, valid=None) -> torch.Tensor:
        session.metrics.count_forward("target")
        return session.model.hidden(ids, pattern=CAUSAL, state=session.state, valid=valid)[:, -1]

    def choose(self, session: Session, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1) if self.greedy else session.model.head.sample(logits, session.generator)

    def start(self, session: Session) -> None:
        self._head(session)
        session.state = session.model.init_state(session.batch_size, initial_capacity(session))
        session.scratch["h"] = self._hidden(session, session.prompt_ids, session.prompt_valid)

    def propose(self, session: Session) -> torch.Tensor:
        head = self._head(session)
        h = session.scratch["h"]
        y1 = self.choose(session, session.process(head(h)))
        if bool((session.remaining <= 1).all()):  # the recycled token would be dropped
            return y1[:, None]
        session.metrics.count_forward("recycle")
        recycled = head.recycle_logits(h, y1)
        session.scratch["recycled_logits"] = recycled
        history = torch.cat([session.history(), y1[:, None]], 1) if session.processors else None
        y2 = self.choose(session, session.process(recycled, history))
        return torch.stack([y1, y2], 1)

    def verify(self, session: Session, proposal: torch.Tensor) -> Commit:
        return Commit.all(proposal)

    def advance(self, session: Session, commit: Commit) -> None:
        session.scratch["h"] = self._hidden(session, commit.tokens)


def build(config, ctx) -> RecycleDecoder:
    return RecycleDecoder(config, ctx)
