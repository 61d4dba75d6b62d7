"""The NAT-CTC objective: CTC loss of the target given the source.

Batch: ``SourceTargetPairs`` samples (``ids`` = ``[source block | target, eos, padding]``,
``mask`` scoring the target and its end-of-sequence id, ``source_length``). The CTC target is the
target without its end-of-sequence id; its length is ``mask.sum() - 1``.
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import FULL

from .head import parallel_logits


def split_batch(batch: dict, source_length: int):
    """(source (B, S), targets (B, T), target lengths (B,)) of a source-conditioned batch."""
    ids = batch["ids"]
    lengths = batch["mask"].sum(1) - 1
    return ids[:, :source_length], ids[:, source_length:], lengths


class NatCtc(Objective):
    pattern = FULL

    def __init__(self, source_length: int):
        super().__init__()
        self.source_length = source_length

    def loss(self, model, batch):
        source, targets, lengths = split_batch(batch, self.source_length)
        logits = parallel_logits(model, source)
        nll = model.head.ctc_nll(logits, targets, lengths)
        tokens = lengths.sum().clamp_min(1).to(nll.dtype)
        out = {"loss": nll.sum() / tokens, "_nats": nll.sum().detach(), "_tokens": tokens.detach()}
        with torch.no_grad():
            decoded = model.head.best_path(logits)
            exact = [d == targets[b, : int(lengths[b])].tolist() for b, d in enumerate(decoded)]
            out["exact_match"] = torch.tensor(sum(exact) / max(len(exact), 1))
        return out


def build(config, ctx):
    source_length = ctx.get("source_length")
    if not source_length:
        raise ConfigError("nat-ctc needs source-conditioned data (a data set that publishes source_length, e.g. 'seq2seq')", path="objective")
    return NatCtc(int(source_length))
