"""The ``spectr`` decoder on the core's propose -> verify -> commit loop.

The batch of ``B`` sequences is expanded to ``B * k`` rows (row ``b * k + j`` is draft ``j`` of
sequence ``b``) for both models. Per round:

1. ``propose``: the draft consumes the tokens committed last round (identical in the ``k`` rows of
   a sequence), its state is snapshotted, then every row samples its own ``x_1..x_gamma`` -- ``k``
   i.i.d. draft sequences per sequence;
2. ``verify``: the target runs once over ``[y, x_1..x_gamma]`` on all ``B * k`` rows; K-SEQ picks
   tokens position by position among the drafts still alive (:func:`.sampling.spectr_block`);
3. the session commits the selected draft prefix and the next token;
4. ``advance``: both states are reordered so that every row of a sequence copies the winning
   draft's row; the target rolls back over the rejected tokens, the draft restores its snapshot
   and is fed the committed tokens next round.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Session, pad_left
from genloom.toolkit.draft import DraftModelDecoder
from genloom.plugins.spectr.sampling import spectr_block


class SpecTrDecoder(DraftModelDecoder):
    """``k`` i.i.d. draft sequences per sequence, K-SEQ selection, one target pass per round."""

    exact = "sampling"

    def __init__(self, config, ctx=None, draft=None):
        super().__init__(config, ctx, draft)
        self.gamma = config.gamma
        self.num_drafts = config.num_drafts
        self.rho = config.rho


    def _probs(self, session: Session, logits: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """Processed (rows, V) logits -> probabilities, with each row's history plus ``extra`` tokens."""
        if session.processors:
            history = session.scratch["history"]
            if extra.shape[1]:
                history = torch.cat([history, extra], dim=1)
            logits = session.process(logits, history)
        return torch.softmax(logits.double(), dim=-1)

    def start(self, session: Session) -> None:
        batch, width = session.prompt_ids.shape
        if width == 0:
            raise ValueError("SpecTr decoding needs a non-empty prompt per sequence")
        k = self.num_drafts
        self.draft.to(session.device)
        capacity = width + session.max_new_tokens + self.gamma + 16
        session.state = session.model.init_state(batch, capacity)
        draft_state = self.draft.init_state(batch, capacity)
        session.prefill_all_but_last(session.state)  # the last prompt token is fed with the first round's drafts
        session.prefill_all_but_last(draft_state, model=self.draft, name="draft")
        expand = torch.arange(batch, device=session.device).repeat_interleave(k)
        session.state.reorder(expand)
        draft_state.reorder(expand)
        session.scratch["draft_state"] = draft_state
        last = session.prompt_ids[:, -1:].repeat_interleave(k, 0)
        session.scratch["target_pending"] = last
        session.scratch["draft_pending"] = (last, torch.ones_like(last, dtype=torch.bool))

    def propose(self, session: Session):
        k = self.num_drafts
        state = session.scratch["draft_state"]
        session.scratch["history"] = session.history().repeat_interleave(k, 0) if session.processors else None
        ids, valid = session.scratch["draft_pending"]
        logits = session.forward(ids, state=state, valid=valid, model=self.draft, name="draft")[:, -1]
        session.scratch["draft_snapshot"] = state.snapshot()
        drafts, probs = [], []
        for i in range(self.gamma):
            so_far = torch.stack(drafts, 1) if drafts else ids.new_zeros(ids.shape[0], 0)
            q = self._probs(session, logits, so_far)
            x = torch.multinomial(q, 1, generator=session.generator).squeeze(-1)  # rows sample independently
            drafts.append(x)
            probs.append(q)
            if i + 1 < self.gamma:
                logits = session.forward(x[:, None], state=state, model=self.draft, name="draft")[:, -1]
        batch = session.batch_size
        drafts = torch.stack(drafts, 1).view(batch, k, self.gamma)
        probs = torch.stack(probs, 1).view(batch, k, self.gamma, -1)
        return drafts, probs

    def verify(self, session: Session, proposal) -> Commit:
        drafts, draft_probs = proposal
        batch, k, gamma = drafts.shape
        flat = drafts.reshape(batch * k, gamma)
        state = session.state
        session.scratch["target_lengths"] = state.lengths.clone()
        logits = session.forward(torch.cat([session.scratch["target_pending"], flat], dim=1), state=state)
        target_probs = torch.stack([self._probs(session, logits[:, i], flat[:, :i]) for i in range(gamma + 1)], 1)
        result = spectr_block(target_probs.view(batch, k, gamma + 1, -1), draft_probs, drafts, self.rho, session.generator)
        session.metrics.record_acceptance(result.num_accepted, gamma, ~session.finished)
        session.scratch["result"] = result
        return Commit(result.tokens, result.num_accepted + 1)

    def advance(self, session: Session, commit: Commit) -> None:
        result = session.scratch["result"]
        k = self.num_drafts
        batch = session.batch_size
        winner_rows = torch.arange(batch, device=session.device) * k + result.winner
        index = winner_rows.repeat_interleave(k)
        # target: every row becomes the winning draft's row, keeping [y, x_1..x_n]
        session.state.reorder(index)
        keep = session.scratch["target_lengths"][index] + 1 + result.num_accepted.repeat_interleave(k)
        session.state.rollback(keep)
        session.scratch["target_pending"] = result.tokens.gather(1, result.num_accepted[:, None]).repeat_interleave(k, 0)
        # draft: back to the snapshot (all rows of a sequence agree there), then re-feed what was committed
        session.scratch["draft_state"].restore(session.scratch["draft_snapshot"])
        rows = [row[:c] for row, c in zip(commit.tokens.tolist(), commit.counts.tolist())]
        ids, valid = pad_left(rows, device=session.device, min_width=1)
        session.scratch["draft_pending"] = (ids.repeat_interleave(k, 0), valid.repeat_interleave(k, 0))


def build(config, ctx):
    return SpecTrDecoder(config, ctx)
