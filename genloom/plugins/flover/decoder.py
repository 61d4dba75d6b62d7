"""The ``flover`` decoder: a batch of prompts served as a stream of requests by the core's
continuous batcher, inside one propose/verify/commit round.

1. ``start``: nothing to prefill yet -- each request is prefilled when it arrives;
2. ``propose``: prompt b becomes a request arriving at step ``b * arrival_interval`` (with the
   session's token budget, stop rules and processors, and, when sampling, a seed drawn from the
   session's generator); the engine runs the stream to the end: per step it admits the arrivals,
   chooses one token per live request, evicts the finished ones (buffer reordering) and advances
   the rest in one fused forward pass;
3. ``verify``: every request's tokens are committed as one block (the session's stop rules agree
   with the engine's, which applied the same ones).
"""

from __future__ import annotations

import torch

from genloom.core.batching import ContinuousBatcher, Request
from genloom.core.generation import Commit, Decoder, Session


class _Greedy(Decoder):
    """The one-token rule of a greedy request: the most likely processed token."""

    def choose(self, session, logits):
        return logits.argmax(-1)


class FloverDecoder(Decoder):
    engine_class = ContinuousBatcher
    """The engine that serves the stream (tests swap in broken variants)."""

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.greedy = config.greedy
        self.arrival_interval = config.arrival_interval
        self.max_batch_size = config.max_batch_size
        self.engine: ContinuousBatcher | None = None
        """The engine of the last call (its ``batch_sizes``, ``fused_clocks`` and metrics)."""

    @property
    def exact(self) -> str:
        """Each request's output is its solo output: greedy decoding, or sampling with its seed."""
        return "greedy" if self.greedy else "sampling"

    def start(self, session: Session) -> None:
        pass  # each request is prefilled when it arrives

    def requests(self, session: Session) -> list[Request]:
        """The session's prompts as a stream of requests."""
        B = session.batch_size
        if self.greedy:
            seeds = [0] * B
        else:
            seeds = torch.randint(0, 2**62, (B,), generator=session.generator, device=session.generator.device if session.generator is not None else None).tolist()
        prompts = [ids[valid].tolist() for ids, valid in zip(session.prompt_ids, session.prompt_valid)]
        return [Request(prompt=p, max_new_tokens=session.max_new_tokens, arrival=b * self.arrival_interval, seed=int(seeds[b]), id=b,
                        stop_strings=tuple(session.stop_strings)) for b, p in enumerate(prompts)]

    def propose(self, session: Session):
        rule = _Greedy() if self.greedy else Decoder()
        engine = self.engine_class(session.model, rule, processors=session.processors, eos_id=session.eos_ids,
                                   max_batch_size=self.max_batch_size, tokenizer=session.tokenizer)
        requests = self.requests(session)
        completions = engine.run(requests)
        self.engine = engine
        m = engine.metrics
        session.metrics.count_forward("target", m.forward_passes)
        session.metrics.extra.update({
            "fused_steps": m.fused_steps, "prefills": m.prefills, "rebuilds": m.rebuilds, "row_steps": m.row_steps,
            "padded_slots": m.padded_slots, "peak_batch": m.peak_batch, "evictions": m.evictions,
            "tokens_per_fused_step": m.tokens_per_fused_step,
            "schedule": [{"arrival": c.arrival, "admitted": c.admitted, "finished": c.finished, "seed": c.seed} for c in completions],
        })
        return completions

    def verify(self, session: Session, completions) -> Commit:
        width = max((len(c.ids) for c in completions), default=0)
        tokens = torch.zeros(len(completions), max(width, 1), dtype=torch.long)
        for b, c in enumerate(completions):
            tokens[b, : len(c.ids)] = torch.tensor(c.ids, dtype=torch.long)
        counts = torch.tensor([len(c.ids) for c in completions], dtype=torch.long)
        return Commit(tokens.to(session.device), counts.to(session.device))

    def advance(self, session: Session, commit: Commit) -> None:
        session.finished[:] = True  # every request ran to its own end inside the engine


def build(config, ctx):
    return FloverDecoder(config, ctx)
