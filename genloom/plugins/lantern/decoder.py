"""The ``lantern`` decoder: speculative sampling with LANTERN's relaxed acceptance.

Per round, for every sequence of the batch (the walk of speculative sampling, with another rule):

1. ``propose``: the draft consumes the tokens committed last round, its state is snapshotted, and
   it samples ``x_1..x_gamma`` autoregressively;
2. ``verify``: the target runs once over ``[y, x_1..x_gamma]``; draft ``x_i`` passes with
   probability ``min(1, p_i(A(x_i)) / q_i(x_i))`` (:class:`genloom.toolkit.acceptance.RelaxedAcceptance`,
   ``A(x)`` the latent neighbourhood of ``x`` limited by the budget ``delta``); the first failure
   gets a draw from ``norm(max(0, p_i - q_i))``, a full pass a bonus draw from ``p_{gamma+1}``;
3. the session commits the accepted drafts and the next token;
4. ``advance``: the target's state is rolled back over the rejected drafts, the draft's snapshot is
   restored and both are fed the new tokens next round.

The neighbourhoods are computed once per target model from its token latents
(:func:`genloom.toolkit.image_ar.token_latents`: the image tokenizer's codebook).
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Session, pad_left
from genloom.toolkit.acceptance import ExactAcceptance, RelaxedAcceptance, verify_chain
from genloom.toolkit.draft import DraftModelDecoder
from genloom.toolkit.image_ar import latent_neighbours, token_latents


class LanternDecoder(DraftModelDecoder):
    """Draft ``gamma`` tokens with a small model, verify them with relaxed acceptance (module docstring)."""

    def __init__(self, config, ctx=None, draft=None):
        super().__init__(config, ctx, draft)
        self.gamma = config.gamma
        self.neighbourhood_size = config.neighbourhood_size
        self.delta = config.delta
        self._rules: dict[int, ExactAcceptance] = {}

    @property
    def exact(self) -> str | None:
        """Exact speculative sampling when the relaxation is off; otherwise within ``delta`` of the target per token."""
        return "sampling" if self.relaxation_off else None

    @property
    def relaxation_off(self) -> bool:
        return self.neighbourhood_size == 1 or self.delta == 0

    def rule(self, model) -> ExactAcceptance:
        """The acceptance rule for ``model`` (its neighbourhoods are computed once)."""
        if self.relaxation_off:
            return ExactAcceptance()
        key = id(model)
        if key not in self._rules:
            latents = token_latents(model)
            if latents.shape[0] != int(model.ctx.vocab_size):
                raise GenerationError(f"the token latents have {latents.shape[0]} rows but the vocabulary {model.ctx.vocab_size} tokens")
            self._rules[key] = RelaxedAcceptance(latent_neighbours(latents, self.neighbourhood_size), self.delta)
        return self._rules[key]

    def start(self, session: Session) -> None:
        batch, width = session.prompt_ids.shape
        if width == 0:
            raise GenerationError("lantern decoding needs a non-empty prompt per sequence (an image's class token)")
        self.draft.to(session.device)
        session.scratch["rule"] = self.rule(session.model)
        capacity = width + session.max_new_tokens + self.gamma + 16
        session.state = session.model.init_state(batch, capacity)
        session.scratch["draft_state"] = self.draft.init_state(batch, capacity)
        session.prefill_all_but_last(session.state)
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
            x = torch.multinomial(q, 1, generator=session.generator).squeeze(-1)
            drafts.append(x)
            probs.append(q)
            if i + 1 < self.gamma:
                logits = session.forward(x[:, None], state=state, model=self.draft, name="draft")[:, -1]
        return torch.stack(drafts, 1), torch.stack(probs, 1)

    def verify(self, session: Session, proposal) -> Commit:
        drafts, draft_probs = proposal
        session.scratch["target_lengths"] = session.state.lengths.clone()
        ids = torch.cat([session.scratch["target_pending"], drafts], dim=1)
        logits = session.forward(ids, state=session.state)  # (B, gamma + 1, V): one target pass
        target_probs = torch.stack([self._probs(session, logits[:, i], self._history(session, drafts[:, :i])) for i in range(self.gamma + 1)], 1)
        num_accepted, next_token, _ = verify_chain(session.scratch["rule"], target_probs, draft_probs, drafts, session.generator)
        session.metrics.record_acceptance(num_accepted, self.gamma, ~session.finished)
        session.scratch["num_accepted"], session.scratch["next_token"] = num_accepted, next_token
        tokens = torch.cat([drafts, drafts.new_zeros(drafts.shape[0], 1)], 1).scatter(1, num_accepted[:, None], next_token[:, None])
        return Commit(tokens, num_accepted + 1)

    def advance(self, session: Session, commit: Commit) -> None:
        session.state.rollback(session.scratch["target_lengths"] + 1 + session.scratch["num_accepted"])
        session.scratch["target_pending"] = session.scratch["next_token"][:, None]
        session.scratch["draft_state"].restore(session.scratch["draft_snapshot"])
        tokens, counts = commit.tokens.tolist(), commit.counts.tolist()
        session.scratch["draft_pending"] = pad_left([row[:c] for row, c in zip(tokens, counts)], device=session.device, min_width=1)


def build(config, ctx):
    return LanternDecoder(config, ctx)
