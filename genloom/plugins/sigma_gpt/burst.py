"""Token-based rejection sampling for sigma-GPT: many tokens per pair of passes.

One round on a row whose known positions are K (the prompt, then the positions filled so far, in
the order they were filled) and whose remaining positions are R:

1. **Draft** (one pass). The last known token is repeated once per remaining position r, each
   copy asking for r as its *next* position; the copies see the known tokens but not each other
   (:class:`DraftPattern`), so copy r gives q_r = p(x_r | x_K). One draft per position:
   ``d_r ~ q_r``.
2. **Verify** (one pass). A uniform order r_1 .. r_m of R; the layout is the known tokens
   followed by the drafts ``d_{r_1} .. d_{r_{m-1}}`` read in that order with the double positional
   encoding, so step r_i gives ``p_i = p(x_{r_i} | x_K, d_{r_1} .. d_{r_{i-1}})``.
3. **Accept** in that order: ``d_{r_i}`` with probability ``min(1, p_i / q_{r_i})``; at the first
   rejection a token is drawn from ``norm(max(p_i - q_{r_i}, 0))`` and the round ends. p_1 = q_{r_1}
   (same context), so every round commits at least one token.

The accepted tokens follow the model's conditionals in the order r_1, r_2, ... exactly (the rule of
speculative sampling, with drafts independent of each other), so the output law is that of
one-token-per-pass decoding in a uniformly random order; a round costs two passes and commits
between 1 and |R| tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genloom.core.generation import Commit, Decoder
from genloom.core.pattern import AttentionPattern

from .decoder import canvas_layout, model_pattern
from .head import hidden_ordered


@dataclass(frozen=True, eq=False)
class DraftPattern(AttentionPattern):
    """Causal (with a bidirectional block of ``prefix_length``) over ``known`` layout positions; the
    positions from ``known - 1`` on are copies of the last known token that see the known tokens
    before it and themselves only, all at model position ``known - 1``."""

    kind: str = "sigma_draft"
    known: int = 1

    def allowed(self, q_pos, kv_pos):
        base = (kv_pos <= q_pos) | (kv_pos < (self.prefix_length or 0))
        copy = q_pos >= self.known - 1
        return base & (~copy | (kv_pos < self.known - 1) | (kv_pos == q_pos))

    def positions(self, index):
        return index.clamp_max(self.known - 1)


class BurstDecoder(Decoder):
    """Token-based rejection sampling (``sigma-gpt-burst``); rows are decoded one after another."""

    name = "sigma-gpt-burst"

    def start(self, session) -> None:
        P, T = canvas_layout(self, session)
        self.pattern = model_pattern(session.model, self.ctx.get("source_length") if self.ctx is not None else None)
        session.scratch.update(P=P, T=T, rounds=[0] * session.batch_size, accepted=[])

    def _logits(self, session, tokens, current, nxt, pattern):
        session.metrics.count_forward("target")
        h = hidden_ordered(session.model, tokens[None], current[None], nxt[None], pattern=pattern)
        logits = session.model.head(h[0]).float() / self.config.temperature
        return logits.log_softmax(-1)

    @staticmethod
    def accept(u: float, ratio: float) -> bool:
        """Keep a draft whose target/draft probability ratio is ``ratio`` (``u`` uniform in [0, 1))."""
        return u < min(1.0, ratio)

    def decode_row(self, session, b: int) -> list[int]:
        P, T = session.scratch["P"], session.scratch["T"]
        device = session.device
        g = session.generator
        known = list(range(P))  # positions, in the order they became known
        values = {i: int(t) for i, t in enumerate(session.prompt_ids[b].tolist())}
        remaining = list(range(P, P + T))
        prefix_length = self.pattern.prefix_length if self.pattern.kind == "prefix" else 0
        while remaining:
            session.scratch["rounds"][b] += 1
            n = len(known)
            # 1. draft: q_r for every remaining r from copies of the last known token
            tokens = torch.tensor([values[i] for i in known] + [values[known[-1]]] * (len(remaining) - 1), device=device)
            current = torch.tensor(known + [known[-1]] * (len(remaining) - 1), device=device)
            nxt = torch.tensor(known[1:] + remaining, device=device)
            q = self._logits(session, tokens, current, nxt, DraftPattern(prefix_length=prefix_length, known=n))[n - 1 :]
            draft = torch.multinomial(q.exp(), 1, generator=g).squeeze(1)  # (|R|,)
            # 2. verify in a uniform order of the remaining positions
            order = torch.randperm(len(remaining), generator=g, device=g.device).tolist()
            seq = [remaining[i] for i in order]
            tokens = torch.tensor([values[i] for i in known] + [int(draft[i]) for i in order[:-1]], device=device)
            current = torch.tensor(known + seq[:-1], device=device)
            nxt = torch.tensor(known[1:] + seq, device=device)
            verify_pattern = AttentionPattern("prefix", prefix_length=prefix_length) if prefix_length else AttentionPattern("causal")
            p = self._logits(session, tokens, current, nxt, verify_pattern)[n - 1 :]
            # 3. accept in that order
            taken = 0
            for j, i in enumerate(order):
                token = int(draft[i])
                ratio = float((p[j, token] - q[i, token]).exp())
                if self.accept(float(torch.rand((), generator=g, device=g.device)), ratio):
                    values[seq[j]] = token
                    known.append(seq[j])
                    taken += 1
                    continue
                residual = (p[j].exp() - q[i].exp()).clamp_min(0)
                values[seq[j]] = int(torch.multinomial(residual / residual.sum(), 1, generator=g))
                known.append(seq[j])
                taken += 1
                break
            session.scratch["accepted"].append(taken)
            remaining = [r for r in remaining if r not in values]
        return [values[i] for i in range(P, P + T)]

    def propose(self, session):
        return [self.decode_row(session, b) for b in range(session.batch_size)]

    def verify(self, session, proposal) -> Commit:
        session.metrics.extra.update(rounds=list(session.scratch["rounds"]), tokens_per_round=session.scratch["accepted"])
        return Commit.all(torch.tensor(proposal, device=session.device))

    def advance(self, session, commit) -> None:
        session.finished[:] = True


def build(config, ctx):
    return BurstDecoder(config, ctx)

