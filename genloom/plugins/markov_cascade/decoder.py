"""The ``markov-cascade`` decoder: every sequence of the batch is decoded by the cascade of
:mod:`.cascade` in one propose step, and committed as one block.

The order-k scores come from the model itself fed k-token contexts (left-padded with the padding
marked invalid, so a k-token context is exactly what the model sees after k tokens); for a Markov
transformer of order m the order-m CRF's score of a sequence is its log-probability, so the last
stage (no pruning) returns the model's most likely continuation of the requested length.
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder, Session
from genloom.plugins.markov_cascade.cascade import cascade


def model_scorer(session: Session):
    """Log-probabilities of the next token after (N, k) contexts (left-padded where ``valid`` is
    False), from the session's model, in chunks of 4096 contexts (one counted pass each)."""

    def score(contexts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        contexts, valid = contexts.to(session.device), valid.to(session.device)
        out = []
        for chunk in range(0, contexts.shape[0], 4096):
            logits = session.forward(contexts[chunk:chunk + 4096], valid=valid[chunk:chunk + 4096])[:, -1]
            out.append(logits.double().log_softmax(-1))
        return torch.cat(out)

    return score


class MarkovCascadeDecoder(Decoder):
    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.max_states = config.max_states
        self.order = config.order
        self.parallel = config.parallel
        self.last = []
        """The :class:`~.cascade.CascadeResult` of every sequence of the last call."""

    @property
    def exact(self):
        return None  # the most likely sequence of the CRF (a MAP decoder), not greedy or sampling

    def _order(self, session: Session) -> int:
        order = self.order or getattr(session.model.backbone, "markov_order", None)
        if order is None:
            raise GenerationError("markov-cascade needs the Markov order: use the markov-transformer backbone or set decoder.order")
        return int(order)

    def start(self, session: Session) -> None:
        if session.processors:
            raise GenerationError("markov-cascade decodes the CRF's most likely sequence from the model's own scores; logits processors do not apply (pass processors=[])")

    def propose(self, session: Session):
        order = self._order(session)
        vocab = session.model.ctx.vocab_size
        results = []
        for b in range(session.batch_size):
            context = session.prompt_ids[b][session.prompt_valid[b]].tolist()
            results.append(cascade(lambda k: model_scorer(session), context, vocab, session.max_new_tokens, order, self.max_states, session.device, self.parallel))
        self.last = results
        session.metrics.extra["stages"] = [r.stages for r in results]
        session.metrics.extra["scan_depth"] = max((s["scan_depth"] for r in results for s in r.stages), default=0)
        return results

    def verify(self, session: Session, results) -> Commit:
        tokens = torch.tensor([r.tokens for r in results], dtype=torch.long, device=session.device)
        return Commit.all(tokens)

    def advance(self, session: Session, commit: Commit) -> None:
        session.finished[:] = True  # the whole continuation was decoded at once


def build(config, ctx):
    return MarkovCascadeDecoder(config, ctx)
