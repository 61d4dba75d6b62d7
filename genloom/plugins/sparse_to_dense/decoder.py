"""The ``sparse-to-dense`` decoder: the model drafts with top-K sparse attention, verifies dense.

Per round, for every sequence of the batch:

1. ``propose``: the same model, its attention forced to the ``topk-sparse`` backend (each query
   keeps its ``top_k`` highest-scoring keys of the KV cache), decodes ``gamma`` tokens greedily
   from the pending token (``gamma`` draft passes on the shared cache); the cache is then rolled
   back to where it was, so the sparse keys and values never stay in it;
2. ``verify``: one dense pass over ``[y, x_1..x_gamma]`` gives the model's own greedy choices; a
   draft is accepted while it equals the dense argmax;
3. the session commits ``x_1..x_n`` and the dense token after them;
4. ``advance``: the cache is rolled back to keep ``y, x_1..x_n``; the dense token is next round's ``y``.

Every committed token is the dense model's greedy choice, so the output equals dense greedy
decoding token for token.
"""

from __future__ import annotations

import torch

from genloom.core import kernels
from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder, Session
from genloom.plugins.sparse_to_dense.sparse_attention import budget


class SparseToDenseDecoder(Decoder):
    """Self-speculative greedy decoding: top-K sparse attention drafts, dense attention verifies."""

    exact = "greedy"

    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.gamma = config.gamma
        self.top_k = config.top_k

    def start(self, session: Session) -> None:
        if session.processors:
            raise GenerationError("the sparse-to-dense decoder is greedy and applies no logits processors; drop the processors")
        batch, width = session.prompt_ids.shape
        session.state = session.model.init_state(batch, width + session.max_new_tokens + self.gamma + 16)
        session.prefill_all_but_last(session.state)
        session.scratch["pending"] = session.prompt_ids[:, -1]

    def propose(self, session: Session):
        state = session.state
        before = state.lengths.clone()
        token, drafts = session.scratch["pending"], []
        with kernels.use("attention", "topk-sparse"), budget(self.top_k):
            for _ in range(self.gamma):
                logits = session.forward(token[:, None], state=state, name="draft")[:, -1]
                token = logits.argmax(-1)
                drafts.append(token)
        state.rollback(before)  # the sparse pass's keys and values leave the cache
        return torch.stack(drafts, 1)

    def verify(self, session: Session, drafts) -> Commit:
        state = session.state
        session.scratch["before"] = state.lengths.clone()
        ids = torch.cat([session.scratch["pending"][:, None], drafts], 1)
        best = session.forward(ids, state=state).argmax(-1)  # (B, gamma + 1): one dense pass
        accepted = (drafts == best[:, : self.gamma]).long().cumprod(1).sum(1)
        next_token = best.gather(1, accepted[:, None])[:, 0]
        session.metrics.record_acceptance(accepted, self.gamma, ~session.finished)
        session.scratch.update(accepted=accepted, next_token=next_token)
        tokens = torch.cat([drafts, drafts.new_zeros(drafts.shape[0], 1)], 1).scatter(1, accepted[:, None], next_token[:, None])
        return Commit(tokens, accepted + 1)

    def advance(self, session: Session, commit: Commit) -> None:
        s = session.scratch
        session.state.rollback(s["before"] + 1 + s["accepted"])  # keep y and the accepted drafts
        s["pending"] = s["next_token"]


def build(config, ctx):
    return SparseToDenseDecoder(config, ctx)
