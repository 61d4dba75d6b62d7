"""The ``asp-bytes`` tokenizer: bytes for the text, then the action ids of an :class:`ActionLayout`.

Ids 0-255 are bytes, 256 ends a sequence, and the action ids follow (open, one close per label,
the links). ``encode`` gives the text's bytes (what the source block holds and what copy actions
reproduce); ``decode`` renders an action sequence with its structure inline
(``⟦x⟧store = ⟦⟦f⟧load(⟦y⟧load →coref:0)⟧call``), which is what ``genloom generate`` prints.
"""

from __future__ import annotations

import numpy as np

from genloom.core.model import Tokenizer

from .actions import ActionLayout, render


class AspBytesTokenizer(Tokenizer):
    def __init__(self, layout: ActionLayout):
        self.layout = layout
        self.eos_id = layout.eos_id
        self.vocab_size = layout.vocab_size

    def encode(self, data) -> list[int]:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64).tolist()

    def encode_array(self, data: bytes) -> np.ndarray:
        return np.append(np.asarray(self.encode(data), dtype=np.int64), self.eos_id)

    def decode(self, ids) -> str:
        return render([int(i) for i in ids], self.layout)


def build(config, ctx):
    return AspBytesTokenizer(ActionLayout(config.labels, config.relations, config.max_spans))
