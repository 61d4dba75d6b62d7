"""Speculative Jacobi decoding: the target drafts for itself, verification is speculative sampling.

Shared by the decoders of the parallel-decoding family that need no draft model (speculative Jacobi
decoding, grouped speculative decoding). The config field (``window``) is
:class:`genloom.toolkit.jacobi_config.JacobiConfig`.

One round of :class:`SpeculativeJacobiDecoder` keeps a window of ``L`` draft tokens ``x_1..x_L``,
each with the law ``q_i`` it was drawn from:

1. ``propose``: the window and its laws;
2. ``verify``: the target runs once over ``[y, x_1..x_L]`` (``y`` the last committed token) and
   gives ``p_1..p_{L+1}``; the acceptance rule (exact: ``min(1, p_i(x_i) / q_i(x_i))``) accepts the
   longest passing prefix ``x_1..x_n``; the next token is drawn from ``norm(max(0, p_{n+1} - q_{n+1}))``
   (or from ``p_{L+1}`` when all pass) -- :func:`genloom.toolkit.acceptance.verify_chain`;
3. the session commits ``x_1..x_n`` and the next token;
4. ``advance``: the target's state is rolled back over the rejected tokens; the Jacobi update
   refills the window: the tokens after the rejected position are redrawn from this pass's
   ``p_j`` (``q_j := p_j``, the target's prediction given the old window), and the freed slots at
   the end get fresh tokens drawn uniformly (``q = uniform``).

Every draft token is a draw from the law recorded with it, made before the verification that tests
it, so each step is an exact speculative step and with the exact rule the committed tokens follow
the target's law. A target whose predictions settle converges like Jacobi iteration: the window
then holds the tokens the target would sample and many pass per round.
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder, Session
from genloom.toolkit.acceptance import ExactAcceptance, verify_chain
from genloom.toolkit.jacobi_config import JacobiConfig

__all__ = ["JacobiConfig", "SpeculativeJacobiDecoder"]


class SpeculativeJacobiDecoder(Decoder):
    """Speculative Jacobi decoding on the core loop (module docstring); subclasses choose :meth:`rule`."""

    def __init__(self, config: JacobiConfig, ctx=None):
        super().__init__(config, ctx)
        self.window = config.window

    @property
    def exact(self) -> str | None:
        """Exact (the target's sampling law) unless the acceptance rule relaxes the test."""
        return None if self.rule(None).relaxed else "sampling"

    def rule(self, model):
        """The acceptance rule for ``model`` (exact speculative sampling here; ``model`` may be None)."""
        return ExactAcceptance()

    def _uniform(self, session: Session, batch: int, width: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randint(vocab, (batch, width), generator=session.generator, device=session.device)
        return tokens, torch.full((batch, width, vocab), 1.0 / vocab, dtype=torch.float64, device=session.device)

    def start(self, session: Session) -> None:
        if session.processors:
            raise GenerationError("speculative Jacobi decoding applies no logits processors (the window's draws would need each its own history); drop the processors")
        batch, width = session.prompt_ids.shape
        if width == 0:
            raise GenerationError("speculative Jacobi decoding needs a non-empty prompt per sequence")
        session.state = session.model.init_state(batch, width + session.max_new_tokens + self.window + 16)
        session.prefill_all_but_last(session.state)
        session.scratch["pending"] = session.prompt_ids[:, -1:]
        session.scratch["vocab"] = int(session.model.ctx.vocab_size)
        session.scratch["window"] = self._uniform(session, batch, self.window, session.scratch["vocab"])
        session.scratch["rule"] = self.rule(session.model)

    def propose(self, session: Session):
        return session.scratch["window"]

    def verify(self, session: Session, proposal) -> Commit:
        drafts, draft_probs = proposal
        session.scratch["lengths"] = session.state.lengths.clone()
        logits = session.forward(torch.cat([session.scratch["pending"], drafts], 1), state=session.state)  # one target pass
        target_probs = torch.softmax(logits.double(), -1)  # (B, L + 1, V)
        num_accepted, next_token, _ = verify_chain(session.scratch["rule"], target_probs, draft_probs, drafts, session.generator)
        session.metrics.record_acceptance(num_accepted, self.window, ~session.finished)
        session.scratch.update(target_probs=target_probs, num_accepted=num_accepted, next_token=next_token)
        tokens = torch.cat([drafts, drafts.new_zeros(drafts.shape[0], 1)], 1).scatter(1, num_accepted[:, None], next_token[:, None])
        return Commit(tokens, num_accepted + 1)

    def advance(self, session: Session, commit: Commit) -> None:
        scratch = session.scratch
        n, probs = scratch["num_accepted"], scratch["target_probs"]
        session.state.rollback(scratch["lengths"] + 1 + n)
        scratch["pending"] = scratch["next_token"][:, None]
        batch, L = n.shape[0], self.window
        # Jacobi update: old slot j > n is redrawn from p_j (its law becomes p_j); freed slots are uniform
        redrawn = torch.multinomial(probs[:, :L].reshape(batch * L, -1), 1, generator=session.generator).reshape(batch, L)
        fresh, uniform = self._uniform(session, batch, L, scratch["vocab"])
        slot = n[:, None] + 1 + torch.arange(L, device=n.device)  # old slot feeding each new slot
        carried = slot < L
        index = slot.clamp(max=L - 1)
        tokens = torch.where(carried, redrawn.gather(1, index), fresh)
        laws = torch.where(carried[..., None], probs[:, :L].gather(1, index[..., None].expand(-1, -1, probs.shape[-1])), uniform)
        scratch["window"] = (tokens, laws)
