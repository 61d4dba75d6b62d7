"""The conditionally structured head: action kinds, span labels and pointers from hidden states.

ASP factorises each step's action ``y_i`` as ``p(kind) p(detail | kind)``:

- ``kind`` in copy / open / close / link / end from the current hidden state ``h_i``
  (:meth:`AspHead.forward`, a linear map; copy is one action: *which* token is copied is fixed
  by the input);
- a close's label from the span it closes, ``softmax(MLP([h_open ; h_i]))`` with ``h_open`` the
  hidden state of the span's open action;
- a link's (target, relation) from the span just closed against every earlier span:
  ``score(j, r) = <q_r(h_i), k(span_j)> / sqrt(P) + b_r`` with ``k(span_j) = W [h_open_j ; h_close_j]``
  (the hidden states of span ``j``'s open and close actions), softmax over the earlier spans
  only (the pointer is masked to valid targets).

:meth:`AspHead.step_log_probs` assembles these into one log-distribution over the whole action
vocabulary for a decoding step; the objective scores the same factors under teacher forcing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core.model import Head

from .actions import ActionLayout, CLOSE, COPY, END, LINK, OPEN

NEG = float("-inf")


def wide(x: torch.Tensor) -> torch.Tensor:
    """Scores in at least single precision (half-precision ones widened, float64 kept)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class AspHead(Head):
    @property
    def decoded_by(self) -> tuple[type, ...]:
        """Only the ``asp`` decoder reads this head (its ``forward`` gives action kinds, not tokens)."""
        from .decoder import AspDecoder

        return (AspDecoder,)

    def __init__(self, layout: ActionLayout, d_model: int, pointer_dim: int = 64, init_std: float = 0.02):
        super().__init__()
        self.layout = layout
        self.pointer_dim = pointer_dim
        n_labels, n_rel = len(layout.labels), len(layout.relations)
        self.embed_tokens = nn.Embedding(layout.vocab_size, d_model)
        self.kind = nn.Linear(d_model, 5)
        self.label = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Linear(d_model, n_labels))
        self.key = nn.Linear(2 * d_model, pointer_dim)
        self.query = nn.Linear(d_model, n_rel * pointer_dim)
        self.relation_bias = nn.Parameter(torch.zeros(n_rel))
        nn.init.normal_(self.embed_tokens.weight, std=init_std)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Action-kind logits (..., 5) in the order of ``actions.KINDS``."""
        return self.kind(h)

    def label_logits(self, h_open: torch.Tensor, h_now: torch.Tensor) -> torch.Tensor:
        """(..., n_labels) label scores of the span from ``h_open`` (its open) to ``h_now``."""
        return self.label(torch.cat([h_open, h_now], -1))

    def span_keys(self, h_open: torch.Tensor, h_close: torch.Tensor) -> torch.Tensor:
        """(..., P) pointer keys of spans from the hidden states of their open and close actions."""
        return self.key(torch.cat([h_open, h_close], -1))

    def pointer_logits(self, h_now: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Scores (B, T, M, R) of links from the span just closed (queries ``h_now`` (B, T, D)) to
        the spans of ``keys`` (B, M, P); ``valid`` (B, T, M) masks the targets that are allowed."""
        B, T, _ = h_now.shape
        q = self.query(h_now).view(B, T, -1, self.pointer_dim)
        scores = torch.einsum("btrp,bmp->btmr", q, keys) / math.sqrt(self.pointer_dim) + self.relation_bias
        return scores.masked_fill(~valid[..., None], NEG)

    def step_log_probs(self, h_now, h_open, keys, key_valid, next_token) -> torch.Tensor:
        """One decoding step's log-probabilities (B, V) over the action vocabulary.

        ``h_now`` (B, D) the current hidden state; ``h_open`` (B, D) the innermost open span's open
        action (any vector when none is open); ``keys`` (B, M, P) and ``key_valid`` (B, M) the
        earlier spans a link may point to; ``next_token`` (B,) the next input token (-1: all copied).
        Actions the head cannot describe (copying past the input, a link with no target) get -inf.
        """
        lay = self.layout
        B = h_now.shape[0]
        kind = wide(self.forward(h_now)).log_softmax(-1)
        out = torch.full((B, lay.vocab_size), NEG, device=h_now.device, dtype=kind.dtype)
        rows = torch.arange(B, device=h_now.device)
        has_next = next_token >= 0
        out[rows[has_next], next_token[has_next]] = kind[has_next, COPY]
        out[:, lay.open_id] = kind[:, OPEN]
        out[:, lay.close_base : lay.link_base] = kind[:, CLOSE, None] + wide(self.label_logits(h_open, h_now)).log_softmax(-1)
        ptr = wide(self.pointer_logits(h_now[:, None], keys, key_valid[:, None])[:, 0]).flatten(1)  # (B, M * R), link-id order
        any_target = key_valid.any(1)
        ptr = torch.where(any_target[:, None], ptr.log_softmax(-1), torch.full_like(ptr, NEG))
        out[:, lay.link_base :] = kind[:, LINK, None] + ptr
        out[:, lay.eos_id] = kind[:, END]
        return out


def build(config, ctx):
    from .data import layout_of

    layout = layout_of(ctx, "head")
    return AspHead(layout, ctx.d_model, config.pointer_dim, config.init_std)
