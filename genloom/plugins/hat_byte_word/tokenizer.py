"""Bytes with whitespace word splitting: ids 0-255 are bytes, 256 ends a document.

A word is a maximal run of bytes ending with a whitespace byte (space, tab, newline, carriage
return, vertical tab, form feed) or with the end id; :meth:`HatBytes.words` cuts a sequence into
them and their concatenation is the sequence again.
"""

from __future__ import annotations

import numpy as np

from genloom.core.model import Tokenizer

WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
EOS = 256


def ends_word(token_id: int) -> bool:
    return token_id in WHITESPACE or token_id == EOS


class HatBytes(Tokenizer):
    def __init__(self, add_eos: bool = True):
        self.add_eos = add_eos
        self.eos_id = EOS
        self.vocab_size = 257

    def encode(self, data) -> list[int]:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return list(bytes(data))

    def encode_array(self, data: bytes) -> np.ndarray:
        ids = np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64)
        return np.append(ids, self.eos_id) if self.add_eos else ids

    def decode_bytes(self, ids) -> bytes:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        out = np.ones(self.vocab_size, dtype=np.float64)
        out[EOS] = 0
        return out

    def words(self, ids) -> list[list[int]]:
        """The sequence cut after every word end; ``sum(words, []) == list(ids)``."""
        out, current = [], []
        for i in ids:
            current.append(int(i))
            if ends_word(int(i)):
                out.append(current)
                current = []
        if current:
            out.append(current)
        return out


def build(config, ctx) -> HatBytes:
    return HatBytes(config.add_eos)
