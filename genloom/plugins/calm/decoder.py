"""CALM decoding on the core's propose/verify/commit loop: one backbone pass per chunk of K tokens.

1. ``start``: each prompt is left-padded with end-of-sequence ids to a whole number of chunks
   (the id that separates documents in the training stream), the rows are left-padded to the
   same number of chunks with ``valid`` False, and one pass over the chunk positions fills the
   backbone's cache and gives the last hidden state h.
2. ``propose``: the energy head draws z ~ g(h, epsilon) and the autoencoder decodes it into K
   tokens (argmax per token, the paper's decoding).
3. ``verify``: all K tokens are committed (the session stops a row at end-of-sequence, a stop
   string or ``max_new_tokens``).
4. ``advance``: the K tokens (compressed by the head's input MLP) are one more backbone position,
   one pass, giving the next h.

L new tokens therefore take ceil(L / K) backbone passes (``metrics.forward_passes``). The
paper's temperature control is a separate rejection algorithm and is not implemented here;
logits processors are refused (there are no next-token logits to process).
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder, initial_capacity


class CalmDecoder(Decoder):
    def start(self, session) -> None:
        if session.processors:
            raise GenerationError("the calm decoder samples whole chunks from a vector generator; logits processors "
                                  "(temperature, top-k, ...) do not apply to it: pass none")
        model = session.model
        K = model.tokenizer.chunk_size
        pad = session.eos_id if session.eos_id is not None else 0
        rows = [session.prompt_ids[b][session.prompt_valid[b]].tolist() for b in range(session.batch_size)]
        rows = [[pad] * ((-len(r)) % K) + r if r else [pad] * K for r in rows]
        width = max(len(r) for r in rows)
        ids = torch.full((session.batch_size, width), pad, dtype=torch.long, device=session.device)
        valid = torch.zeros(session.batch_size, width // K, dtype=torch.bool, device=session.device)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long, device=session.device)
            valid[b, (width - len(r)) // K:] = True
        capacity = width // K + -(-session.max_new_tokens // K) + 2
        session.state = model.init_state(session.batch_size, min(capacity, initial_capacity(session)))
        h = session.forward(ids, state=session.state, valid=valid)
        session.scratch["h"] = h[:, -1]

    def propose(self, session) -> torch.Tensor:
        model = session.model
        z = model.head.sample(session.scratch["h"], session.generator)
        return model.tokenizer.decode_vectors(z)

    def verify(self, session, proposal: torch.Tensor) -> Commit:
        return Commit.all(proposal)

    def advance(self, session, commit: Commit) -> None:
        h = session.forward(commit.tokens, state=session.state)
        session.scratch["h"] = h[:, -1]


def build_decoder(config, ctx=None) -> CalmDecoder:
    return CalmDecoder(config, ctx)
