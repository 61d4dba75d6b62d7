"""Self-speculative decoding with mask tokens (the paper's linear speculative decoding), greedy.

Each step feeds one chunk ``[pending, d_1 .. d_m, <mask> x m]`` to the model with the KV cache:

- ``pending`` is the base model's greedy token from the previous step (final, not yet in the cache);
- ``d_1..d_m`` are the drafts the sampler produced from the previous step's masks (their slots are
  marked invalid for a sequence that has no drafts, so its masks follow ``pending`` directly);
- the base model's greedy choices ``g_0..g_m`` at ``pending`` and the drafts verify the drafts:
  ``d_j`` is accepted while ``d_j == g_{j-1}``; ``pending`` and the accepted drafts are committed,
  and ``g_a`` (after the last accepted token) becomes the next ``pending``;
- when every draft was accepted (or there were none), the masks at the end of the chunk followed
  the right context, so the sampler drafts the next ``m`` tokens from them; otherwise the next step
  runs without drafts.

The cache is rolled back to the committed tokens (``state.rollback``), which drops the rejected
drafts and the masks.

Quadratic decoding (``quadratic: true``, the paper's variant) feeds ``[y, M^m, d_1, M^m, ..., d_m,
M^m]`` instead: a block of ``m`` masks after *every* chain token, each block seeing only its own
chain prefix (the chunk is a token tree under the core's tree attention pattern, with the masks'
positions following their chain token). Whatever prefix of the drafts is accepted, the block after
the last accepted token followed exactly the committed context, so every step has fresh drafts;
the KV cache keeps the accepted chain only (``KVCache.keep``) and drops the rest. Ordinary positions never attend to a mask (masks come last, the pattern is
causal) and their gate is off, so every verified token is the base model's greedy choice: the
output equals plain greedy decoding token for token.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder, Session
from genloom.core.pattern import CAUSAL, tree


class MTPSpeculativeDecoder(Decoder):
    """Greedy self-speculative decoding with the gated-LoRA mask tokens."""

    exact = "greedy"

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        default = ctx.get("mtp_n_masks") if ctx is not None else None
        self.n_masks = int(config.n_masks or default or 4)
        self.quadratic = bool(getattr(config, "quadratic", False))

    # -- helpers --------------------------------------------------------------------------
    def _head(self, session):
        head = session.model.head
        if not hasattr(head, "draft") or not hasattr(head, "mask_id"):
            raise TypeError("the mtp decoder needs the 'mtp' head (mask token, sampler)")
        return head

    def _hidden(self, session: Session, ids, valid=None, pattern=CAUSAL):
        session.metrics.count_forward("target")
        return session.model.hidden(ids, pattern=pattern, state=session.state, valid=valid)

    def _greedy(self, session: Session, logits: torch.Tensor, chunk: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy tokens (B,) or (B, k) from processed base logits (processors see the chunk so far)."""
        if not session.processors:
            return logits.argmax(-1)
        if logits.dim() == 2:
            return session.process(logits).argmax(-1)
        hist = session.history()
        picks = []
        for j in range(logits.shape[1]):
            h_j = torch.cat([hist, chunk[:, : j + 1]], 1)
            picks.append(session.process(logits[:, j], history=h_j).argmax(-1))
        return torch.stack(picks, 1)

    def _masks(self, session, batch):
        return torch.full((batch, self.n_masks), self._head(session).mask_id, dtype=torch.long, device=session.device)

    # -- the loop -------------------------------------------------------------------------
    def start(self, session: Session) -> None:
        head, m, B = self._head(session), self.n_masks, session.batch_size
        capacity = session.prompt_ids.shape[1] + session.max_new_tokens + 2 * m + 16
        session.state = session.model.init_state(B, capacity)
        before = session.state.lengths.clone()
        ids = torch.cat([session.prompt_ids, self._masks(session, B)], 1)
        valid = torch.cat([session.prompt_valid, torch.ones(B, m, dtype=torch.bool, device=session.device)], 1)
        h = self._hidden(session, ids, valid)
        P = session.prompt_ids.shape[1]
        pending = self._greedy(session, head(h[:, P - 1]))
        drafts = head.draft(h[:, P:], pending)
        session.state.rollback(before + session.prompt_valid.sum(1))
        session.scratch.update(pending=pending, drafts=drafts, has_drafts=torch.ones(B, dtype=torch.bool, device=session.device))

    def propose(self, session: Session):
        s = session.scratch
        return s["pending"], s["drafts"], s["has_drafts"]

    def quadratic_layout(self) -> tuple[tuple[int, ...], torch.Tensor]:
        """Parents of the quadratic chunk ``[y, M^m, d_1, M^m, ..., d_m, M^m]`` as a token tree, and the
        chunk indices of the chain ``y, d_1..d_m``: each chain token continues the previous one, each
        mask block hangs off its chain token (so it sees that token's prefix only)."""
        m = self.n_masks
        parents = []
        for j in range(m + 1):
            parents.append((j - 1) * (m + 1) if j else -1)
            parents += [j * (m + 1) + i for i in range(m)]  # mask i + 1 follows mask i (or the chain token)
        return tuple(parents), torch.arange(m + 1) * (m + 1)

    def verify_quadratic(self, session: Session, pending, drafts) -> Commit:
        """One pass over the quadratic chunk under the tree pattern; keep the accepted chain only."""
        head, m, B = self._head(session), self.n_masks, session.batch_size
        parents, chain_at = self.quadratic_layout()
        chain_at = chain_at.to(session.device)
        chain = torch.cat([pending[:, None], drafts], 1)  # (B, 1 + m)
        ids = self._masks(session, B).new_full((B, len(parents)), self._head(session).mask_id)
        ids[:, chain_at] = chain
        h = self._hidden(session, ids, pattern=tree(parents, session.state.lengths))
        greedy = self._greedy(session, head(h[:, chain_at]), chain)  # g_0..g_m
        accepted = (drafts == greedy[:, :m]).long().cumprod(1).sum(1)
        next_pending = greedy.gather(1, accepted[:, None])[:, 0]
        # the mask block after the last accepted token followed exactly the committed context
        block = (chain_at[accepted] + 1)[:, None] + torch.arange(m, device=session.device)
        new_drafts = head.draft(h.gather(1, block[..., None].expand(B, m, h.shape[-1])), next_pending)
        keep = torch.zeros(B, len(parents), dtype=torch.bool, device=session.device)
        keep[:, chain_at] = torch.arange(m + 1, device=session.device)[None] <= accepted[:, None]
        session.state.keep(keep)  # drop the rejected drafts and every mask block
        session.metrics.record_acceptance(accepted, m, active=~session.finished)
        session.scratch.update(pending=next_pending, drafts=new_drafts)
        return Commit(chain, 1 + accepted)

    def verify(self, session: Session, proposal) -> Commit:
        pending, drafts, has_drafts = proposal
        if self.quadratic:
            return self.verify_quadratic(session, pending, drafts)
        head, m, B = self._head(session), self.n_masks, session.batch_size
        before = session.state.lengths.clone()
        chunk = torch.cat([pending[:, None], drafts], 1)  # (B, 1 + m)
        ones = torch.ones(B, 1, dtype=torch.bool, device=session.device)
        if bool(has_drafts.any()):
            ids = torch.cat([chunk, self._masks(session, B)], 1)
            valid = torch.cat([ones, has_drafts[:, None].expand(B, m), ones.expand(B, m)], 1)
            h = self._hidden(session, ids, valid)
            greedy = self._greedy(session, head(h[:, : 1 + m]), chunk)  # g_0..g_m
            match = (drafts == greedy[:, :m]) & has_drafts[:, None]
            accepted = match.long().cumprod(1).sum(1)  # a in 0..m
        else:  # no sequence has drafts: [pending, masks] is enough
            h = self._hidden(session, torch.cat([pending[:, None], self._masks(session, B)], 1))
            h = torch.cat([h[:, :1], h[:, :1].expand(B, m, h.shape[-1]), h[:, 1:]], 1)  # same layout as above
            greedy = self._greedy(session, head(h[:, :1]), chunk[:, :1])
            accepted = torch.zeros(B, dtype=torch.long, device=session.device)
        next_pending = greedy.gather(1, accepted[:, None])[:, 0]
        # the masks followed the right context only if every draft was accepted (or there were none)
        fresh = ~has_drafts | (accepted == m)
        new_drafts = head.draft(h[:, 1 + m :], next_pending) if bool(fresh.any()) else drafts
        session.state.rollback(before + 1 + accepted)
        session.metrics.record_acceptance(accepted, m, active=has_drafts & ~session.finished)
        session.scratch.update(pending=next_pending, drafts=new_drafts, has_drafts=fresh)
        return Commit(chunk, 1 + accepted)

    def advance(self, session: Session, commit: Commit) -> None:
        pass  # the verify pass already advanced the cache


def build(config, ctx) -> MTPSpeculativeDecoder:
    return MTPSpeculativeDecoder(config, ctx)
