"""Re-translation of a streaming source with a non-autoregressive model.

:class:`Retranslator` holds the source received so far and a NAT decoder taken from the registry
(``nat-ctc`` by default: one parallel forward pass per output). Each :meth:`Retranslator.update`
appends new source tokens, lays the whole prefix out as a source block and re-translates it with
exactly one NAT pass; the new translation *replaces* the previous one entirely (no prefix of the
old output is kept, so a later source token can change any earlier output token).

:func:`erasure` counts how many tokens of a previous output must be deleted to reach the new one
(its length minus the longest common prefix), the usual flicker measure of re-translation.
"""

from __future__ import annotations

from genloom.core.data import pad_id_of, source_block
from genloom.core.generation import run


class Retranslator:
    def __init__(self, model, nat_decoder, *, max_new_tokens: int, eos_id=None):
        self.model, self.decoder = model, nat_decoder
        self.source_length = int(model.ctx.get("source_length"))
        self.pad = pad_id_of(model.tokenizer)
        self.max_new_tokens, self.eos_id = max_new_tokens, eos_id
        self.source: list[int] = []
        self.translation: list[int] = []
        self.passes = 0

    def update(self, new_tokens) -> list[int]:
        """Append ``new_tokens`` to the source and re-translate the whole prefix (one NAT pass)."""
        return self.update_many([self], [new_tokens])[0]

    @staticmethod
    def update_many(streams: list["Retranslator"], new_tokens: list) -> list[list[int]]:
        """One batched NAT pass re-translating several streams of one model (each its own prefix)."""
        first = streams[0]
        blocks = []
        for s, new in zip(streams, new_tokens):
            s.source.extend(int(t) for t in new)
            blocks.append(source_block(s.source[-s.source_length :], s.source_length, s.pad))
        result = run(first.model, blocks, first.decoder, max_new_tokens=first.max_new_tokens, eos_id=first.eos_id)
        passes = sum(result.metrics.forward_passes.values())
        for s, ids in zip(streams, result.ids):
            s.translation = [t for t in ids if t not in (s.eos_id if isinstance(s.eos_id, (list, tuple)) else (s.eos_id,))]
            s.passes += passes
        return [s.translation for s in streams]


def erasure(previous: list[int], new: list[int]) -> int:
    """Tokens of ``previous`` deleted to reach ``new``: len(previous) minus their longest common prefix."""
    common = 0
    for a, b in zip(previous, new):
        if a != b:
            break
        common += 1
    return len(previous) - common
