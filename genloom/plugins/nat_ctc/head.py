"""The NAT-CTC head and the one parallel forward pass.

``parallel_logits(model, source)``: embed the (B, S) source block, upsample each position into k
decoder inputs (Libovický & Helcl's state splitting: a linear map D -> k x D, plus a learnt
vector per slot so the k copies differ), run the backbone once over ``[source | upsampled]``
under the ``full`` pattern and score the k x S upsampled positions over the vocabulary + blank.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Head
from genloom.core.pattern import FULL
from genloom.toolkit.ctc import ctc_loss, greedy_decode


class CtcHead(Head):
    def __init__(self, vocab_size: int, d_model: int, blank_id: int, upsample_ratio: int, tie_weights: bool = True, init_std: float = 0.02):
        super().__init__()
        self.vocab_size, self.blank_id, self.upsample_ratio = vocab_size, blank_id, upsample_ratio
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.upsample = nn.Linear(d_model, upsample_ratio * d_model)
        self.slot = nn.Parameter(torch.zeros(upsample_ratio, d_model))
        nn.init.normal_(self.embed_tokens.weight, std=init_std)
        nn.init.normal_(self.slot, std=init_std)
        if tie_weights:
            self.lm_head.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=init_std)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def upsampled(self, source_h: torch.Tensor) -> torch.Tensor:
        """(B, S, D) -> (B, k x S, D): position s gives decoder inputs k s .. k s + k - 1."""
        B, S, D = source_h.shape
        return (self.upsample(source_h).view(B, S, self.upsample_ratio, D) + self.slot).reshape(B, S * self.upsample_ratio, D)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)

    def ctc_nll(self, logits: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) -log p(target | source), summed over every alignment of the k x S outputs."""
        return ctc_loss(logits.float().log_softmax(-1), targets, logits.shape[1], target_lengths, blank=self.blank_id)

    def best_path(self, logits: torch.Tensor) -> list[list[int]]:
        return greedy_decode(logits, self.blank_id)


def parallel_logits(model, source: torch.Tensor) -> torch.Tensor:
    """(B, k x S, V + blank) output logits for the (B, S) source block: one backbone pass."""
    from genloom.core import kernels

    head = model.head
    if not isinstance(head, CtcHead):
        raise ConfigError(f"nat-ctc needs the 'ctc' head (it upsamples the source and scores a blank), got {type(head).__name__}", path="head")
    e = head.embed(source)
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        h = model.backbone(torch.cat([e, head.upsampled(e)], 1), pattern=FULL)
    return head(h[:, source.shape[1] :])


def build(config, ctx):
    source_length = ctx.get("source_length")
    if not source_length:
        raise ConfigError("the ctc head needs source-conditioned data (a data set that publishes source_length, e.g. 'seq2seq')", path="head")
    return CtcHead(ctx.vocab_size, ctx.d_model, ctx.blank_id, config.upsample_ratio, config.tie_weights, config.init_std)
