"""The hierarchical byte/word model: character encoder, word backbone, character decoder.

For bytes x_t (embeddings from the ``hat-byte`` head, channel 0 = "this byte ends a word"), with
k_t the position of byte t inside its word and w_t the number of complete words before it::

    r_t      = tanh(W_e (x_t + P_e[k_t]))            character encoder, per byte
    word_i   = sum_{t in word i} r_t                 word embedding (order-aware through P_e)
    o_i      = word_backbone(word_1 .. word_i)       over complete words only: length = #words
    c_t      = o_{w_t} if t ends its word, else o_{w_t - 1} (a learned start vector before any word)
    p_t      = 0 if t ends its word, else sum_{s in word(t), s <= t} tanh(W_d (x_s + P_d[k_s]))
    hidden_t = LN(c_t + MLP(c_t + p_t))              character decoder: predicts byte t + 1

So the prediction inside word i sees the words before i (through the backbone) and the bytes of
word i decoded so far, nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core.model import Backbone, Head
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import State, as_lengths
from genloom.plugins.hat_byte_word.tokenizer import WHITESPACE


class HatHead(Head):
    """Byte embeddings whose channel 0 is the word-end flag (fixed), logits over the 257 ids."""

    def __init__(self, cfg, vocab_size: int, d_model: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.out = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed_tokens.weight, std=cfg.init_std)
        nn.init.normal_(self.out.weight, std=cfg.init_std)
        flag = torch.zeros(vocab_size)
        flag[list(WHITESPACE)] = 1.0
        flag[vocab_size - 1] = 1.0  # the end id closes the last word
        self.register_buffer("word_end", flag, persistent=False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed_tokens(ids)
        return torch.cat([self.word_end[ids].to(e.dtype)[..., None], e[..., 1:]], -1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h)


class HatState(State):
    """The word backbone's state, per-row running sums of the current word, the last context."""

    rollback_any = False

    def __init__(self, words, batch: int, d_model: int, *, device, dtype):
        self.words = words
        self.batch_size = batch
        z = lambda: torch.zeros(batch, d_model, device=device, dtype=dtype)  # noqa: E731
        self.ctx, self.enc_sum, self.pre_sum = z(), z(), z()
        self.has_ctx = torch.zeros(batch, dtype=torch.bool, device=device)
        self.k = torch.zeros(batch, dtype=torch.long, device=device)
        self._lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self._last = None  # (snapshot before the last advance, its inputs, its step mask)

    @property
    def lengths(self):
        return self._lengths

    def _fields(self):
        return (self.ctx, self.enc_sum, self.pre_sum, self.has_ctx, self.k, self._lengths)

    def _set_fields(self, values):
        self.ctx, self.enc_sum, self.pre_sum, self.has_ctx, self.k, self._lengths = values

    def snapshot(self):
        return (self.words.snapshot(), tuple(t.clone() for t in self._fields()), self._last, self.batch_size)

    def restore(self, snap):
        words, fields, self._last, self.batch_size = snap
        self.words.restore(words)
        self._set_fields(tuple(t.clone() for t in fields))

    def reorder(self, index):
        index = index.to(self.k.device)
        self.words.reorder(index)
        self._set_fields(tuple(t.index_select(0, index) for t in self._fields()))
        self._last = None  # a reordered state rolls back only after its next advance
        self.batch_size = int(index.numel())

    def rollback(self, lengths):
        lengths = as_lengths(lengths, self.batch_size, self.k.device)
        if bool((lengths > self._lengths).any()):
            raise ValueError(f"cannot roll forward: asked for lengths {lengths.tolist()} but the state holds {self._lengths.tolist()}")
        if bool((lengths == self._lengths).all()):
            return
        if self._last is None:
            raise ValueError("a hat-byte-word state rolls back only within its most recent advance (and not after a reorder); take a snapshot() first")
        before, h, steps, backbone = self._last
        floor = before[1][5]
        if bool((lengths < floor).any()):
            raise ValueError(f"a hat-byte-word state rolls back only within its most recent advance (to lengths >= {floor.tolist()}), asked for {lengths.tolist()}")
        keep = steps & (steps.long().cumsum(1) <= (lengths - floor)[:, None])
        self.restore(before)
        backbone.advance(h, self, keep)


class HatByteWord(Backbone):
    patterns = frozenset({"causal"})

    def __init__(self, cfg, ctx):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.pos_enc = nn.Embedding(cfg.max_word_length, D)
        self.pos_dec = nn.Embedding(cfg.max_word_length, D)
        self.enc = nn.Linear(D, D)
        self.dec_in = nn.Linear(D, D)
        self.start = nn.Parameter(torch.zeros(D))
        self.decoder = nn.Sequential(nn.Linear(D, cfg.decoder_hidden), nn.GELU(), nn.Linear(cfg.decoder_hidden, D))
        self.norm = nn.LayerNorm(D)
        self.word_backbone = ctx.build("backbone", {**cfg.word_backbone, "d_model": D}, path="backbone.word_backbone")
        ctx.set("d_model", D)
        self.last_word_lengths: list[int] = []  # sequence lengths the word backbone saw (for tests)

    def _pos(self, k):
        return k.clamp_max(self.cfg.max_word_length - 1)

    def _decode(self, c, p):
        return self.norm(c + self.decoder(c + p))

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state: HatState | None = None, valid=None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the hat-byte-word backbone serves only the causal pattern, got '{pattern.kind}'")
        B, L, D = h.shape
        steps = torch.ones(B, L, dtype=torch.bool, device=h.device) if valid is None else valid.to(h.device, torch.bool)
        if state is not None:
            return self.advance(h, state, steps)
        # move each row's real bytes to the front (stable): padding then only trails
        order = torch.sort((~steps).to(torch.int8), dim=1, stable=True).indices
        h = h.gather(1, order[..., None].expand_as(h))
        real = torch.arange(L, device=h.device)[None, :] < steps.sum(1)[:, None]
        out = self._full(h, real)
        return torch.empty_like(out).scatter(1, order[..., None].expand_as(out), out)

    def _full(self, h, real):
        B, L, D = h.shape
        t = torch.arange(L, device=h.device)
        end = (h[..., 0] > 0.5) & real
        endl = end.long()
        words_before = endl.cumsum(1) - endl  # complete words before t
        marks = torch.where(end, t + 1, torch.zeros_like(t))
        start = F.pad(marks, (1, 0))[:, :-1].cummax(1).values  # first byte of t's word
        k = t[None, :] - start
        r = torch.tanh(self.enc(h + self.pos_enc(self._pos(k)))) * real[..., None]
        rd = torch.tanh(self.dec_in(h + self.pos_dec(self._pos(k)))) * real[..., None]
        n_words = endl.sum(1)
        W = int(n_words.max()) if B else 0
        if W:
            words = torch.zeros(B, W + 1, D, dtype=h.dtype, device=h.device).scatter_add(1, words_before[..., None].expand_as(r), r)[:, :W]
            word_valid = torch.arange(W, device=h.device)[None, :] < n_words[:, None]
            self.last_word_lengths = [W]
            o = self.word_backbone(words, pattern=CAUSAL, valid=None if bool(word_valid.all()) else word_valid)
        else:
            o = h.new_zeros(B, 0, D)
        last = words_before + endl - 1  # index of the last complete word after t
        context = torch.where((last >= 0)[..., None], o.gather(1, last.clamp_min(0)[..., None].expand(B, L, D)) if W else h.new_zeros(B, L, D), self.start.to(h.dtype))
        cum = rd.cumsum(1)
        before_word = torch.where((start > 0)[..., None], cum.gather(1, (start - 1).clamp_min(0)[..., None].expand_as(cum)), torch.zeros_like(cum))
        prefix = torch.where(end[..., None], torch.zeros_like(cum), cum - before_word)
        return self._decode(context, prefix)

    def advance(self, h, state: HatState, steps):
        """Feed new bytes one step at a time; the word backbone advances when a word completes."""
        before = state.snapshot()
        B, L, D = h.shape
        outputs = []
        for t in range(L):
            x, on = h[:, t], steps[:, t]
            pos = self._pos(state.k)
            r = torch.tanh(self.enc(x + self.pos_enc(pos)))
            rd = torch.tanh(self.dec_in(x + self.pos_dec(pos)))
            enc_sum = state.enc_sum + r * on[:, None]
            pre_sum = state.pre_sum + rd * on[:, None]
            ended = on & (x[:, 0] > 0.5)
            if bool(ended.any()):
                o = self.word_backbone(enc_sum[:, None], pattern=CAUSAL, state=state.words, valid=ended[:, None])[:, 0]
                state.ctx = torch.where(ended[:, None], o, state.ctx)
                state.has_ctx = state.has_ctx | ended
            context = torch.where(state.has_ctx[:, None], state.ctx, self.start.to(h.dtype).expand(B, D))
            outputs.append(self._decode(context, torch.where(ended[:, None], torch.zeros_like(pre_sum), pre_sum)))
            state.enc_sum = torch.where(ended[:, None], torch.zeros_like(enc_sum), enc_sum)
            state.pre_sum = torch.where(ended[:, None], torch.zeros_like(pre_sum), pre_sum)
            state.k = torch.where(ended, torch.zeros_like(state.k), state.k + on.long())
        state._lengths = state._lengths + steps.sum(1)
        state._last = (before, h.detach(), steps, self)
        return torch.stack(outputs, 1) if outputs else h.new_zeros(B, 0, D)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> HatState:
        param = next(self.parameters())
        device = device if device is not None else param.device
        dtype = dtype if dtype is not None else param.dtype
        words = self.word_backbone.init_state(batch_size, capacity, device=device, dtype=dtype)
        return HatState(words, batch_size, self.cfg.d_model, device=device, dtype=dtype)


def build(config, ctx) -> HatByteWord:
    return HatByteWord(config, ctx)


def build_head(config, ctx) -> HatHead:
    return HatHead(config, ctx.vocab_size, ctx.d_model)
