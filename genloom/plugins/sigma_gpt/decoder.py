"""Any-order decoding on the shared loop: one position per forward pass, in a chosen order.

``start`` fixes the canvas (``target_length`` positions after a source block, or
``max_new_tokens`` positions after a plain prompt), draws the order of its positions (uniform
with the session's generator, or left to right) and prefills the prompt with a KV cache; the last
prompt token carries the first canvas position as its *next* position, so the prefill's last
logits are that position's distribution. Each round ``propose`` picks a token for the position
the order names, ``verify`` writes it into the canvas (nothing is committed to the session until
the canvas is full; then the canvas is committed left to right and the session stops it at its
first end-of-sequence id), and ``advance`` feeds the token with (its position, the next position
of the order): one forward pass per token, with a cache, as for a left-to-right model.
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder
from genloom.core.pattern import CAUSAL, prefix
from genloom.toolkit.anyorder import identity_orders, random_orders

from .head import hidden_ordered


def canvas_layout(decoder: Decoder, session) -> tuple[int, int]:
    """(prompt length P, canvas length T) of a session; every prompt must be complete and of one length."""
    if not bool(session.prompt_valid.all()):
        raise GenerationError(f"the {decoder.name} decoder needs prompts of one length (a source block from generate(source=...), or equal-length prompts)")
    P = session.prompt_ids.shape[1]
    source_length = decoder.ctx.get("source_length") if decoder.ctx is not None else None
    if source_length:
        if P != source_length:
            raise GenerationError(f"the {decoder.name} decoder reads exactly one source block of source_length={source_length} tokens: call generate(source=...) without a target prefix")
        T = int(decoder.ctx.get("target_length"))
    else:
        T = session.max_new_tokens
    limit = session.model.head.positions.max_positions
    if P + T > limit:
        raise GenerationError(f"prompt ({P}) + canvas ({T}) positions exceed the head's max_positions={limit}")
    return P, T


def model_pattern(model, source_length):
    if model.objective is not None:
        return model.objective.pattern
    return prefix(source_length) if source_length else CAUSAL


class AnyOrderDecoder(Decoder):
    name = "sigma-gpt"
    exact = None  # left to right and greedy it is a plain model's greedy decoding (tested), but the core's
    # own greedy decoder cannot run this head incrementally, so there is no reference to compare against

    def start(self, session) -> None:
        P, T = canvas_layout(self, session)
        B, device = session.batch_size, session.device
        if self.config.order == "left-to-right":
            order = identity_orders(B, P + T, device)
        else:
            order = random_orders(B, P + T, fixed=P, generator=session.generator, device=device)
        session.scratch.update(order=order, P=P, T=T, step=0, canvas=torch.full((B, T), -1, dtype=torch.long, device=device))
        session.state = session.model.init_state(B, P + T + 1)
        self.pattern = model_pattern(session.model, self.ctx.get("source_length") if self.ctx is not None else None)
        self._feed(session, session.prompt_ids, order[:, :P], order[:, 1 : P + 1])

    def _feed(self, session, tokens, current, nxt):
        session.metrics.count_forward("target")
        h = hidden_ordered(session.model, tokens, current, nxt, pattern=self.pattern, state=session.state)
        session.scratch["next_logits"] = session.model.head(h[:, -1])

    def choose(self, session, logits):
        if self.config.greedy:
            return logits.argmax(-1)
        return session.model.head.sample(logits / self.config.temperature, session.generator)

    def propose(self, session):
        return self.choose(session, session.scratch["next_logits"])

    def verify(self, session, proposal) -> Commit:
        s = session.scratch
        position = s["order"][:, s["P"] + s["step"]] - s["P"]
        s["canvas"].scatter_(1, position[:, None], proposal[:, None])
        s["step"] += 1
        if s["step"] < s["T"]:
            return Commit(proposal[:, None], torch.zeros_like(proposal))  # nothing is final until the canvas is
        return Commit.all(s["canvas"])

    def advance(self, session, commit) -> None:
        s = session.scratch
        if s["step"] >= s["T"]:
            session.finished[:] = True  # the whole canvas is committed
            return
        t = s["P"] + s["step"]  # layout index of the token just chosen
        order = s["order"]
        token = s["canvas"].gather(1, (order[:, t - 1 : t] - s["P"]))
        self._feed(session, token, order[:, t - 1 : t], order[:, t : t + 1])


def build(config, ctx):
    return AnyOrderDecoder(config, ctx)
