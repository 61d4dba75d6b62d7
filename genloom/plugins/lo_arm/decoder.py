"""LO-ARM decoding on the shared loop: the learnt order policy picks each next position.

``start`` lays out ``[prompt | canvas]`` (the source block and ``target_length`` masked positions
from ``generate(source=...)``, or a plain prompt and ``max_new_tokens`` masked positions). Each
round is one generator pass on the current state: ``propose`` picks a masked position from the
order policy ``p(z | state)`` and its token from ``p(x_z | state)`` (each the argmax with
``greedy``, else a draw); ``verify`` writes it into the canvas. Nothing reaches the session until
the canvas is full; then the canvas is committed left to right (the session stops each sequence
at its first end-of-sequence id). One forward pass per position, no cache (the state is re-read
bidirectionally every step).
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder
from genloom.core.pattern import FULL

from .head import generator_step


class LoArmDecoder(Decoder):
    def start(self, session) -> None:
        if not bool(session.prompt_valid.all()):
            raise GenerationError("the lo-arm decoder needs prompts of one length (a source block from generate(source=...), or equal-length prompts)")
        P = session.prompt_ids.shape[1]
        source_length = self.ctx.get("source_length") if self.ctx is not None else None
        if source_length and P != source_length:
            raise GenerationError(f"the lo-arm decoder reads exactly one source block of source_length={source_length} tokens: call generate(source=...) without a target prefix")
        T = int(self.ctx.get("target_length")) if source_length else session.max_new_tokens
        B = session.batch_size
        ids = torch.cat([session.prompt_ids, torch.zeros(B, T, dtype=torch.long, device=session.device)], 1)
        revealed = torch.zeros_like(ids, dtype=torch.bool)
        revealed[:, :P] = True
        session.scratch.update(ids=ids, revealed=revealed, P=P, T=T, step=0)

    def _pick(self, session, log_probs):
        if self.config.greedy:
            return log_probs.argmax(-1)
        return torch.multinomial((log_probs / self.config.temperature).softmax(-1), 1, generator=session.generator).squeeze(-1)

    def propose(self, session):
        s = session.scratch
        session.metrics.count_forward("target")
        token_lp, order_lp = generator_step(session.model, s["ids"], s["revealed"], FULL)
        position = self._pick(session, order_lp)
        token = self._pick(session, token_lp.gather(1, position[:, None, None].expand(-1, 1, token_lp.shape[-1])).squeeze(1))
        return position, token

    def verify(self, session, proposal) -> Commit:
        s = session.scratch
        position, token = proposal
        s["ids"].scatter_(1, position[:, None], token[:, None])
        s["revealed"].scatter_(1, position[:, None], True)
        s["step"] += 1
        if s["step"] < s["T"]:
            return Commit(token[:, None], torch.zeros_like(token))  # nothing is final until the canvas is
        return Commit.all(s["ids"][:, s["P"] :])

    def advance(self, session, commit) -> None:
        if session.scratch["step"] >= session.scratch["T"]:
            session.finished[:] = True


def build(config, ctx):
    return LoArmDecoder(config, ctx)
