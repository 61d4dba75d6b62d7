"""NAT-CTC decoding on the shared loop: one forward pass per output.

``start`` checks that each prompt is exactly the source block (``generate(source=...)`` builds
it); ``propose`` runs :func:`parallel_logits` once and collapses the best path; ``verify``
commits it with an end-of-sequence id, so every sequence finishes in the first round.
"""

from __future__ import annotations


from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder

from .head import parallel_logits


class NatCtcDecoder(Decoder):
    exact = None

    def start(self, session) -> None:
        source_length = self.ctx.get("source_length") if self.ctx is not None else None
        if not source_length or session.prompt_ids.shape[1] != source_length or not bool(session.prompt_valid.all()):
            raise GenerationError(f"the nat-ctc decoder reads exactly one source block of source_length={source_length} tokens per sequence: call generate(source=...) without a target prefix")

    def propose(self, session):
        session.metrics.count_forward("target")
        logits = parallel_logits(session.model, session.prompt_ids)
        return session.model.head.best_path(logits)

    def verify(self, session, proposal) -> Commit:
        return Commit.sequences(proposal, session.eos_id, session.device)

    def advance(self, session, commit) -> None:
        session.finished[:] = True  # the whole output came from one pass


def build(config, ctx):
    return NatCtcDecoder(config, ctx)
