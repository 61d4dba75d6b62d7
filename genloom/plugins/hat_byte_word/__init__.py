"""Hierarchical Autoregressive Transformers: Combining Byte- and Word-Level Processing (Neitemeier et al., 2025).

What the paper does. Instead of a learned subword vocabulary, the text is split into words at
whitespace, and the model is hierarchical: a light character-level *encoder* turns each word's
bytes into one word embedding, a word-level *backbone* (a causal transformer) runs over the word
sequence (so its length is the number of words, the compression a subword tokenizer would
give), and a light character-level *decoder* spells the next word byte by byte from the backbone's
output for the previous words and the bytes of the current word decoded so far. There is no
fixed vocabulary: any byte string round-trips, and the model is more robust to spelling
variation and adapts faster to new languages.

What this implementation does. Tokenizer ``hat-bytes`` (:mod:`.tokenizer`): bytes 0-255 and an
end id, words split after each whitespace byte; ``decode(encode(x)) == x`` for any bytes and the
words concatenate back to the sequence. Head ``hat-byte``: byte embeddings whose channel 0 is the
fixed word-end flag of that split rule (so the backbone sees where words end), logits over the
257 ids. Backbone ``hat-byte-word`` (:mod:`.model`): the character encoder embeds each byte with
its position inside the word and sums them into the word embedding; the word backbone is any
registered causal backbone asked for by name (``word_backbone``, the baseline transformer by
default) over the words; the character decoder predicts the byte after position t from the word
backbone's output for the last *complete* word and an order-aware summary of the current word's
bytes up to t. The incremental state holds the word backbone's state and per-row running sums
(constant size besides that state), rolls back by replaying the kept bytes.

What it simplifies. The character encoder and decoder are order-aware sums with an MLP instead of
small transformers (the paper's are a few transformer layers); words split on ASCII whitespace
only (the paper also splits on other word boundaries); the head's channel 0 carries the
tokenizer's word-end flag to the backbone; tiny widths, byte-level text of the Python standard
library instead of the paper's corpora.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Hierarchical Autoregressive Transformers: Combining Byte- and Word-Level Processing for Robust, Adaptable Language Models", year=2025, arxiv="2501.10322")


@dataclass
class HatBytesConfig:
    """Bytes 0-255 and an end-of-document id 256; words end after a whitespace byte."""

    add_eos: bool = True
    """Append the end id after each document."""


@dataclass
class HatHeadConfig:
    """Byte embeddings (channel 0: the word-end flag) in, logits over the 257 ids out."""

    init_std: float = 0.02
    """Standard deviation of the embedding and output initialisation."""


@dataclass
class HatBackboneConfig:
    """Character encoder, word-level backbone, character decoder."""

    d_model: int = 128
    """Width of byte and word representations; published as ``ctx.d_model``."""
    max_word_length: int = 32
    """In-word positions with their own embedding (longer words reuse the last one)."""
    word_backbone: dict[str, Any] = field(default_factory=lambda: {"name": "transformer", "n_layers": 2, "n_heads": 4})
    """The word-level backbone component (d_model is set by this backbone)."""
    decoder_hidden: int = 256
    """Hidden width of the character decoder's MLP."""

    def __post_init__(self):
        for name in ("d_model", "max_word_length", "decoder_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not isinstance(self.word_backbone, dict) or "name" not in self.word_backbone:
            raise ValueError(f"word_backbone must be a component node with a name, got {self.word_backbone!r}")
        if "d_model" in self.word_backbone:
            raise ValueError("word_backbone.d_model is set by hat-byte-word (from d_model); remove it")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_tokenizers():
    return [records.tokenizer("hat-bytes", "genloom.plugins.hat_byte_word.tokenizer:build", HatBytesConfig, "Bytes with whitespace word splitting for hierarchical byte/word models; exact round trip.", PAPER)]


@hookimpl
def genloom_heads():
    return [records.head("hat-byte", "genloom.plugins.hat_byte_word.model:build_head", HatHeadConfig, "Byte embeddings carrying the word-end flag, logits over bytes (for hat-byte-word).", PAPER)]


@hookimpl
def genloom_backbones():
    return [records.backbone("hat-byte-word", "genloom.plugins.hat_byte_word.model:build", HatBackboneConfig, "Hierarchical byte/word model: char encoder -> word backbone (registry) -> char decoder.", PAPER)]
