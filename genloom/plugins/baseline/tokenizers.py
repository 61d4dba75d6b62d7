"""Byte-level and BPE tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genloom.core.model import Tokenizer


class ByteTokenizer(Tokenizer):
    """Ids 0-255 are the bytes themselves; 256 ends a document. Round-trips any bytes exactly."""

    def __init__(self, add_eos: bool = True):
        self.add_eos = add_eos
        self.eos_id = 256
        self.vocab_size = 257

    def encode(self, data) -> list[int]:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64).tolist()

    def encode_array(self, data: bytes) -> np.ndarray:
        ids = np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64)
        return np.append(ids, self.eos_id) if self.add_eos else ids

    def decode_bytes(self, ids) -> bytes:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """Bytes each id stands for (for bits-per-byte)."""
        out = np.ones(self.vocab_size, dtype=np.float64)
        out[256:] = 0
        return out


class BpeTokenizer(Tokenizer):
    """Byte-level BPE (Hugging Face ``tokenizers``), trained by :meth:`fit` on the training split."""

    EOS = "<|eos|>"

    def __init__(self, vocab_size: int = 1024, min_frequency: int = 2, max_train_bytes: int = 4_000_000, add_eos: bool = True):
        self.vocab_size = vocab_size
        self.min_frequency = min_frequency
        self.max_train_bytes = max_train_bytes
        self.add_eos = add_eos
        self._tok = None
        self.eos_id = 0

    @property
    def trained(self) -> bool:
        return self._tok is not None

    def fit(self, source, ctx=None) -> None:
        from tokenizers import Tokenizer as HfTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if self.trained:
            return
        docs = source.documents("train") if hasattr(source, "documents") else []
        texts, total = [], 0
        for doc in docs:
            if total >= self.max_train_bytes:
                break
            texts.append(doc.decode("utf-8", errors="replace"))
            total += len(doc)
        tok = HfTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=self.vocab_size, min_frequency=self.min_frequency, special_tokens=[self.EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        self._set(tok)

    def _set(self, tok) -> None:
        self._tok = tok
        self.eos_id = tok.token_to_id(self.EOS)
        actual = tok.get_vocab_size()
        if actual > self.vocab_size:
            raise ValueError(f"trained BPE has {actual} tokens, more than vocab_size={self.vocab_size}")

    def _need(self):
        if self._tok is None:
            raise RuntimeError("the BPE tokenizer is not trained: it is fitted on the data set's training split before training, or loaded from a run directory")
        return self._tok

    def encode(self, data) -> list[int]:
        if isinstance(data, (bytes, bytearray)):
            data = bytes(data).decode("utf-8", errors="replace")
        return self._need().encode(data).ids

    def encode_array(self, data: bytes) -> np.ndarray:
        ids = np.asarray(self.encode(data), dtype=np.int64)
        return np.append(ids, self.eos_id) if self.add_eos else ids

    def encode_many(self, docs) -> list[np.ndarray]:
        encs = self._need().encode_batch([d.decode("utf-8", errors="replace") for d in docs])
        out = []
        for e in encs:
            ids = np.asarray(e.ids, dtype=np.int64)
            out.append(np.append(ids, self.eos_id) if self.add_eos else ids)
        return out

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self._need().get_vocab_size() and int(i) != self.eos_id]
        return self._need().decode(ids)

    def token_bytes(self) -> np.ndarray:
        tok = self._need()
        out = np.zeros(self.vocab_size, dtype=np.float64)
        for token, idx in tok.get_vocab().items():
            if idx != self.eos_id:
                out[idx] = len(token)  # byte-level alphabet: one character per byte
        return out

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._need().save(str(directory / "bpe.json"))
        (directory / "bpe_meta.json").write_text(json.dumps({"vocab_size": self.vocab_size}))

    def load(self, directory) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        path = Path(directory) / "bpe.json"
        if not path.exists():
            from genloom.core.errors import CheckpointError

            raise CheckpointError(f"trained BPE file '{path}' is missing from the run directory")
        self._set(HfTokenizer.from_file(str(path)))


def build_bytes(config, ctx):
    return ByteTokenizer(add_eos=config.add_eos)


def build_bpe(config, ctx):
    return BpeTokenizer(config.vocab_size, config.min_frequency, config.max_train_bytes, config.add_eos)


class IdsTokenizer(Tokenizer):
    """Ids in, ids out: decode gives the ids as a space-separated string."""

    def __init__(self, vocab_size: int, eos_id: int | list[int] | None = None):
        self.vocab_size = vocab_size
        self.eos_ids = tuple(eos_id) if isinstance(eos_id, (list, tuple)) else (() if eos_id is None else (eos_id,))
        """Every end-of-sequence id; generation stops at any of them."""
        self.eos_id = self.eos_ids[0] if self.eos_ids else None

    def encode(self, data) -> list[int]:
        items = data.split() if isinstance(data, str) else list(data)
        try:
            ids = [int(x) for x in items]
        except (TypeError, ValueError):
            raise ValueError(f"the ids tokenizer reads whitespace-separated integers, got {data!r}") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return ids

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


def build_ids(config, ctx):
    return IdsTokenizer(config.vocab_size, config.eos_id)
