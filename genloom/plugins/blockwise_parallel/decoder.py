"""Blockwise parallel decoding with the merged verify/propose step (Stern et al., 2018, Sec. 3-4).

``start`` runs the prompt and takes the k heads' choices at its last position as the first block
``y_1..y_k`` (``y_1`` is the base head's greedy choice). Each ``verify`` is one model call:

- predict: the block is already known (from the previous call);
- verify: feed ``y_1..y_k`` with the KV cache; at each of these positions the base head's greedy
  choice ``g_j`` is what plain greedy decoding would emit next. ``y_1`` is the base choice itself,
  and ``y_{j+1}`` is accepted while ``y_{j+1} == g_j`` (or lies in the base head's top
  ``accept_top_k``, the paper's approximate acceptance). The longest accepted prefix ``y_1..y_n``
  is committed and the cache is rolled back to it (``state.rollback``);
- merged propose: the same call gave the hidden state at every position of the block, so the k
  heads read at the last accepted position ``n`` give the next block, without another model call
  (only the heads run there, and only at that position).

With exact acceptance (``accept_top_k = 1``) every committed token is the base head's greedy
choice given the committed prefix, so the output equals plain greedy decoding token for token,
and a sequence of N tokens takes about N / (mean accepted block size) + 1 model calls.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder, Session
from genloom.core.pattern import CAUSAL


class BlockwiseParallelDecoder(Decoder):
    """Greedy blockwise parallel decoding (predict, verify, accept; merged steps)."""

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.requested = config.block_size
        self.accept_top_k = config.accept_top_k

    @property
    def exact(self) -> str | None:
        """Exact acceptance reproduces greedy decoding; top-k acceptance is approximate."""
        return "greedy" if self.accept_top_k <= 1 else None

    def _head(self, session):
        head = session.model.head
        if not hasattr(head, "proposal_logits"):
            raise TypeError("the blockwise-parallel decoder needs the 'blockwise-parallel' head (it owns the proposal heads)")
        k = self.requested or head.block_size
        if k > head.block_size:
            raise ValueError(f"block_size {k} exceeds the head's {head.block_size} proposal heads")
        return head, k

    def _hidden(self, session: Session, ids, valid=None):
        session.metrics.count_forward("target")
        return session.model.hidden(ids, pattern=CAUSAL, state=session.state, valid=valid)

    def _processed(self, session: Session, logits: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """Base logits (B, k, V) after the processors; position j's history ends with block[:, :j+1]."""
        if not session.processors:
            return logits
        hist = session.history()
        return torch.stack([session.process(logits[:, j], history=torch.cat([hist, block[:, : j + 1]], 1)) for j in range(logits.shape[1])], 1)

    def _block(self, session: Session, heads_logits: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """The next block: ``first`` (the base choice) then the argmax of heads 2..k."""
        return torch.cat([first[:, None], heads_logits[:, 1:].argmax(-1)], 1)

    def start(self, session: Session) -> None:
        head, k = self._head(session)
        capacity = session.prompt_ids.shape[1] + session.max_new_tokens + 2 * k + 16
        session.state = session.model.init_state(session.batch_size, capacity)
        h = self._hidden(session, session.prompt_ids, session.prompt_valid)[:, -1]
        heads = head.proposal_logits(h, k)  # (B, k, V)
        first = session.process(heads[:, 0]).argmax(-1)
        session.scratch["block"] = self._block(session, heads, first)

    def propose(self, session: Session):
        return session.scratch["block"]

    def verify(self, session: Session, block: torch.Tensor) -> Commit:
        head, k = self._head(session)
        before = session.state.lengths.clone()
        h = self._hidden(session, block)  # (B, k, D)
        base = self._processed(session, head(h), block)  # head 1 at every block position
        greedy = base.argmax(-1)  # g_j: the base choice after y_1..y_j
        if self.accept_top_k <= 1:
            ok = block[:, 1:] == greedy[:, :-1]
        else:
            top = base[:, :-1].topk(self.accept_top_k, dim=-1).indices
            ok = (top == block[:, 1:, None]).any(-1)
        accepted = 1 + ok.long().cumprod(1).sum(1)  # n in 1..k
        session.state.rollback(before + accepted)
        last = (accepted - 1)[:, None]
        first = greedy.gather(1, last)[:, 0]
        # merged propose: the heads at the last accepted position (same call, no new model pass)
        h_last = h.gather(1, last[:, :, None].expand(-1, 1, h.shape[-1]))[:, 0]
        session.scratch["block"] = self._block(session, head.proposal_logits(h_last, k), first)
        session.metrics.record_acceptance(accepted, k, active=~session.finished)
        return Commit(block, accepted)

    def advance(self, session: Session, commit: Commit) -> None:
        pass  # the verify call already advanced the cache and proposed the next block


def build(config, ctx) -> BlockwiseParallelDecoder:
    return BlockwiseParallelDecoder(config, ctx)
