"""The EdiT5 head: the token embedding and the three output layers over one backbone.

The backbone reads ``[source block | start, insertion tokens...]`` under ``prefix(S)``: the source
block (positions ``0 .. S-1``) is the bidirectional encoder, the rest is the causal insertion
decoder that sees every encoder state through attention (the prefix form of conditioning,
docs/plugin-guide.md). On the encoder states ``h_src`` (B, S, D):

- tagging: ``tag_logits(h_src)`` (B, S, 2), delete (0) / keep (1) per source position;
- re-ordering: ``pointer_scores(h_src)`` (B, 1 + S, S), see ``pointer.py``;

and on the decoder states ``h_dec`` (B, L, D), ``insertion_logits(h_dec, h_src)`` (B, L, V): the
vocabulary logits, except that the slot markers after source tokens are scored by pointing
(``q(h_dec) . k(h_src_p) / sqrt(d)`` for the marker of the slot after position ``p``), so the
decoder names a slot by attending to its source token rather than by a per-position output row;
the start token is never predicted.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Head
from genloom.core.pattern import prefix

from .pointer import PointerScores


class Edit5Head(Head):
    @property
    def decoded_by(self) -> tuple[type, ...]:
        """Only the ``edit5`` decoder reads this head (tags, pointers, then insertions)."""
        from .decoder import Edit5Decoder

        return (Edit5Decoder,)

    def __init__(self, vocab_size: int, d_model: int, source_length: int, slot_id: int, start_id: int, d_pointer: int = 64, init_std: float = 0.02):
        super().__init__()
        self.vocab_size, self.source_length, self.slot_id, self.start_id = vocab_size, source_length, slot_id, start_id
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed_tokens.weight, std=init_std)
        self.lm_head.weight = self.embed_tokens.weight
        self.tagger = nn.Linear(d_model, 2)
        self.pointer = PointerScores(d_model, d_pointer, init_std)
        self.slot_query = nn.Linear(d_model, d_pointer)
        self.slot_key = nn.Linear(d_model, d_pointer)
        self.d_pointer = d_pointer

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)

    def tag_logits(self, h_src: torch.Tensor) -> torch.Tensor:
        return self.tagger(h_src)

    def pointer_scores(self, h_src: torch.Tensor) -> torch.Tensor:
        return self.pointer(h_src)

    def insertion_logits(self, h_dec: torch.Tensor, h_src: torch.Tensor) -> torch.Tensor:
        """(B, L, V) logits of the next insertion-sequence token at each decoder position."""
        S = self.source_length
        base = self.lm_head(h_dec)
        after = self.slot_query(h_dec) @ self.slot_key(h_src).transpose(1, 2) / math.sqrt(self.d_pointer)  # (B, L, S)
        lo, hi = self.slot_id + 1, self.slot_id + 1 + S
        logits = torch.cat([base[..., :lo], after.to(base.dtype), base[..., hi:]], -1)
        never = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        never[self.start_id] = True
        return logits.masked_fill(never, float("-inf"))


def edit5_head(model) -> Edit5Head:
    if not isinstance(model.head, Edit5Head):
        raise ConfigError(f"the edit5 objective and decoder need the 'edit5' head, got {type(model.head).__name__}", path="head")
    return model.head


def end_id(ctx, path: str = "decoder") -> int:
    """The end marker of the insertion sequence: the tokenizer's (first) end-of-sequence id."""
    eos = ctx.get("eos_id")
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    if eos is None:
        raise ConfigError("edit5 ends the insertion sequence with the tokenizer's end-of-sequence id: use a tokenizer that has one", path=path)
    return int(eos)


def hidden(model, ids: torch.Tensor, state=None) -> torch.Tensor:
    """Backbone states of ``ids`` under ``prefix(S)`` (continuing ``state`` when given)."""
    return model.hidden(ids, pattern=prefix(edit5_head(model).source_length), state=state)


def build(config, ctx):
    from . import reserve_tokens

    source_length = ctx.get("source_length")
    if not source_length:
        raise ConfigError("the edit5 head needs source-conditioned data (a data set that publishes source_length, e.g. 'edit-fusion')", path="head")
    slot_id, start_id = reserve_tokens(ctx)
    return Edit5Head(ctx.vocab_size, ctx.d_model, int(source_length), slot_id, start_id, config.d_pointer, config.init_std)
