"""The ``speculative`` decoder on the core's propose -> verify -> commit loop.

Per round, for every sequence of the batch:

1. ``propose``: the draft consumes the tokens committed last round (one forward pass over a
   left-padded chunk), its state is snapshotted, then it samples ``x_1..x_gamma`` autoregressively
   (``gamma`` draft passes in all);
2. ``verify``: the target runs once over ``[y, x_1..x_gamma]`` (``y`` the last committed token,
   which the target has not consumed yet) and gives the ``gamma + 1`` distributions; the block
   rule of :mod:`.sampling` picks the accepted count ``n`` and the next token;
3. the session commits ``x_1..x_n`` and the next token;
4. ``advance``: the target's state is rolled back to keep ``y, x_1..x_n`` (a rollback within its
   latest advance, which every state supports) and the draft's snapshot is restored; the newly
   committed tokens are fed to both in the next round.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Session, pad_left
from genloom.toolkit.draft import DraftModelDecoder
from genloom.plugins.speculative.sampling import greedy_block, speculative_block


class SpeculativeDecoder(DraftModelDecoder):
    """Draft ``gamma`` tokens with a small model, verify them with the target in one pass."""

    def __init__(self, config, ctx=None, draft=None):
        super().__init__(config, ctx, draft)
        self.gamma = config.gamma
        self.greedy = config.greedy

    @property
    def exact(self) -> str:
        """Greedy drafting reproduces greedy decoding; otherwise the output law is the target's."""
        return "greedy" if self.greedy else "sampling"

    # -- the loop -------------------------------------------------------------------------------
    def start(self, session: Session) -> None:
        batch, width = session.prompt_ids.shape
        if width == 0:
            raise ValueError("speculative decoding needs a non-empty prompt per sequence")
        self.draft.to(session.device)
        capacity = width + session.max_new_tokens + self.gamma + 16
        session.state = session.model.init_state(batch, capacity)
        session.scratch["draft_state"] = self.draft.init_state(batch, capacity)
        session.prefill_all_but_last(session.state)  # the last prompt token is fed with the first round's drafts
        session.prefill_all_but_last(session.scratch["draft_state"], model=self.draft, name="draft")
        last = session.prompt_ids[:, -1:]
        session.scratch["target_pending"] = last
        session.scratch["draft_pending"] = (last, torch.ones_like(last, dtype=torch.bool))

    def propose(self, session: Session):
        state = session.scratch["draft_state"]
        session.scratch["history"] = session.history() if session.processors else None
        ids, valid = session.scratch["draft_pending"]
        logits = session.forward(ids, state=state, valid=valid, model=self.draft, name="draft")[:, -1]
        session.scratch["draft_snapshot"] = state.snapshot()
        drafts, probs = [], []
        for i in range(self.gamma):
            so_far = torch.stack(drafts, 1) if drafts else ids.new_zeros(ids.shape[0], 0)
            q = self._probs(session, logits, self._history(session, so_far))
            x = q.argmax(-1) if self.greedy else torch.multinomial(q, 1, generator=session.generator).squeeze(-1)
            drafts.append(x)
            probs.append(q)
            if i + 1 < self.gamma:
                logits = session.forward(x[:, None], state=state, model=self.draft, name="draft")[:, -1]
        return torch.stack(drafts, 1), torch.stack(probs, 1)

    def verify(self, session: Session, proposal) -> Commit:
        drafts, draft_probs = proposal
        state = session.state
        session.scratch["target_lengths"] = state.lengths.clone()
        ids = torch.cat([session.scratch["target_pending"], drafts], dim=1)
        logits = session.forward(ids, state=state)  # (B, gamma + 1, V): one target pass
        if self.greedy:
            processed = torch.stack([session.process(logits[:, i], self._history(session, drafts[:, :i])) if session.processors else logits[:, i] for i in range(self.gamma + 1)], 1)
            result = greedy_block(processed, drafts)
        else:
            target_probs = torch.stack([self._probs(session, logits[:, i], self._history(session, drafts[:, :i])) for i in range(self.gamma + 1)], 1)
            result = speculative_block(target_probs, draft_probs, drafts, session.generator)
        active = ~session.finished
        session.metrics.record_acceptance(result.num_accepted, self.gamma, active)
        session.scratch["result"] = result
        return Commit(result.tokens(drafts), result.num_accepted + 1)

    def advance(self, session: Session, commit: Commit) -> None:
        result = session.scratch["result"]
        # target: keep [y, x_1..x_n]; the next token is fed next round
        session.state.rollback(session.scratch["target_lengths"] + 1 + result.num_accepted)
        session.scratch["target_pending"] = result.next_token[:, None]
        # draft: back to where it had consumed every committed token, then re-feed x_1..x_n, next
        session.scratch["draft_state"].restore(session.scratch["draft_snapshot"])
        tokens = commit.tokens.tolist()
        counts = commit.counts.tolist()
        session.scratch["draft_pending"] = pad_left([row[:c] for row, c in zip(tokens, counts)], device=session.device, min_width=1)


def build(config, ctx):
    return SpeculativeDecoder(config, ctx)
