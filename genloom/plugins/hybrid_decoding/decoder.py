"""The ``hybrid-decoding`` decoder on the core's propose -> verify -> commit loop.

Per round, for every sequence of the batch:

0. ``start``: both decoders consume the whole prompt in one pass (a source-conditioned prompt is a
   source block read bidirectionally, so none of it may be fed later) and keep their next-token logits;
1. ``propose``: the fast decoder consumes the tokens committed last round (one pass over a
   left-padded chunk; nothing in the first round), its state is snapshotted, then it drafts
   greedily until each sequence has drafted an end-of-sequence id or its remaining budget (the
   whole hypothesis);
2. ``verify``: the full decoder runs once over ``[y, d_1..d_K]`` (``y`` the last committed token,
   not consumed yet; in the first round only the drafts, after the prefill's logits) and takes its
   greedy choice ``g_i`` at every position; ``n`` = the number of leading drafts with ``d_i == g_i``
   (within the sequence's own draft length), and the commit is ``d_1..d_n`` followed by the
   correction ``g_{n+1}``;
3. ``advance``: the full decoder rolls back to keep ``[y,] d_1..d_n`` (within its latest advance,
   which every state supports); the fast decoder restores its snapshot and is fed the committed
   tokens next round.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Session, pad_left
from genloom.toolkit.draft import DraftModelDecoder


class HybridDecoder(DraftModelDecoder):
    """A fast decoder drafts the whole remaining hypothesis; the full decoder verifies it in one pass."""

    exact = "greedy"

    def start(self, session: Session) -> None:
        # both decoders consume the whole prompt at once: a source-conditioned prompt is a source
        # block read bidirectionally, so no part of it may be fed later
        batch, width = session.prompt_ids.shape
        self.draft.to(session.device)
        capacity = width + 2 * session.max_new_tokens + 16
        session.state = session.model.init_state(batch, capacity)
        session.scratch["draft_state"] = self.draft.init_state(batch, capacity)
        ids, valid = session.prompt_ids, session.prompt_valid
        session.scratch["target_next"] = session.forward(ids, state=session.state, valid=valid)[:, -1]
        session.scratch["draft_next"] = session.forward(ids, state=session.scratch["draft_state"], valid=valid, model=self.draft, name="draft")[:, -1]
        session.scratch["target_pending"] = None  # the last committed token, when not consumed yet
        session.scratch["draft_pending"] = None
        session.metrics.extra.update({"rounds": 0, "corrections": 0})

    def propose(self, session: Session):
        """Draft greedily until end-of-sequence or the budget: (B, K) drafts and (B,) draft lengths."""
        state = session.scratch["draft_state"]
        if session.scratch["draft_pending"] is None:
            logits = session.scratch["draft_next"]
        else:
            ids, valid = session.scratch["draft_pending"]
            logits = session.forward(ids, state=state, valid=valid, model=self.draft, name="draft")[:, -1]
        session.scratch["draft_snapshot"] = state.snapshot()
        budget = session.remaining.clone()
        lengths = torch.zeros_like(budget)
        open_ = budget > 0
        drafts = []
        eos = torch.tensor(session.eos_ids, dtype=torch.long, device=session.device)
        while bool(open_.any()):
            x = logits.argmax(-1)
            drafts.append(x)
            lengths = lengths + open_.long()
            open_ = open_ & (lengths < budget) & ~torch.isin(x, eos)
            if bool(open_.any()):
                logits = session.forward(x[:, None], state=state, model=self.draft, name="draft")[:, -1]
        if not drafts:  # every sequence is out of budget (cannot happen while one is unfinished)
            drafts.append(torch.zeros(budget.shape[0], dtype=torch.long, device=session.device))
        return torch.stack(drafts, 1), lengths

    def _choices(self, session: Session, logits: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
        """The full decoder's greedy choice at every position (processors with each position's history)."""
        if not session.processors:
            return logits.argmax(-1)
        base = session.history()
        return torch.stack([session.process(logits[:, i], torch.cat([base, drafts[:, :i]], 1)).argmax(-1) for i in range(logits.shape[1])], 1)

    def verify(self, session: Session, proposal) -> Commit:
        drafts, lengths = proposal
        session.scratch["target_lengths"] = session.state.lengths.clone()
        pending = session.scratch["target_pending"]
        if pending is None:  # the first round: the prefill gave the first position's logits
            logits = torch.cat([session.scratch["target_next"][:, None], session.forward(drafts, state=session.state)], 1)  # one pass
        else:
            logits = session.forward(torch.cat([pending, drafts], 1), state=session.state)  # one pass
        choices = self._choices(session, logits, drafts)  # (B, K + 1)
        K = drafts.shape[1]
        agree = (drafts == choices[:, :K]) & (torch.arange(K, device=drafts.device)[None] < lengths[:, None])
        accepted = agree.long().cumprod(1).sum(1)  # the longest agreeing prefix
        correction = choices.gather(1, accepted[:, None]).squeeze(1)
        tokens = torch.cat([drafts, drafts.new_zeros(drafts.shape[0], 1)], 1).scatter(1, accepted[:, None], correction[:, None])
        active = ~session.finished
        session.metrics.record_acceptance(accepted, lengths, active)
        session.metrics.extra["rounds"] += 1
        session.metrics.extra["corrections"] += int(((accepted < lengths) & active).sum())
        session.scratch["accepted"] = accepted
        session.scratch["next"] = correction
        return Commit(tokens, accepted + 1)

    def advance(self, session: Session, commit: Commit) -> None:
        accepted = session.scratch["accepted"]
        fed_pending = int(session.scratch["target_pending"] is not None)
        session.state.rollback(session.scratch["target_lengths"] + fed_pending + accepted)  # keep [y,] d_1..d_n
        session.scratch["target_pending"] = session.scratch["next"][:, None]
        session.scratch["draft_state"].restore(session.scratch["draft_snapshot"])
        rows = [row[:c] for row, c in zip(commit.tokens.tolist(), commit.counts.tolist())]
        session.scratch["draft_pending"] = pad_left(rows, device=session.device, min_width=1)


def build(config, ctx):
    return HybridDecoder(config, ctx)
