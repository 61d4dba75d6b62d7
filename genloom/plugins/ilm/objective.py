"""The ILM objective: delete a random subset, learn the distribution of the next insertion.

Per sequence, a deletion rate r ~ U(0, 1) and an independent Bernoulli(r) deletion of each target
token leave a canvas. The training target over (slot, token) insertions and stop
(:func:`insertion_target`) puts on (slot k, token v) the fraction of the missing tokens that are
v and lie in slot k, so a slot's mass is proportional to its number of missing tokens; with
nothing missing all mass goes to stop. The loss is the cross-entropy of the model's joint
distribution against that target (its minimum, the target's entropy, is reached exactly when the
model's distribution equals the target).
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import FULL
from genloom.toolkit.anyorder import gap_tokens, prefix_and_targets

from .head import joint_log_probs


def split(batch: dict, source_length: int | None):
    """(prefix (B, P), the target tokens of each row): ``genloom.toolkit.anyorder.prefix_and_targets``."""
    return prefix_and_targets(batch, source_length)


def insertion_target(target: list[int], keep: list[bool], slots: int, vocab_size: int) -> torch.Tensor:
    """(slots * V + 1,) the target distribution over (slot, token) insertions and stop."""
    q = torch.zeros(slots * vocab_size + 1, dtype=torch.float64)
    gaps = gap_tokens(target, keep)
    missing = sum(len(g) for g in gaps)
    if missing == 0:
        q[-1] = 1.0
        return q
    for k, g in enumerate(gaps):
        for v in g:
            q[k * vocab_size + v] += 1.0 / missing
    return q


class Ilm(Objective):
    pattern = FULL

    def __init__(self, source_length: int | None, pad_id: int):
        super().__init__()
        self.source_length, self.pad_id = source_length, pad_id

    def loss(self, model, batch):
        prefix, targets = split(batch, self.source_length)
        rates = torch.rand(len(targets)).tolist()
        keeps = [(torch.rand(len(t)) >= r).tolist() for t, r in zip(targets, rates)]
        canvases = [[v for v, k in zip(t, keep) if k] for t, keep in zip(targets, keeps)]
        log_p = joint_log_probs(model, prefix, canvases, self.pad_id)
        V = model.head.vocab_size
        slots = (log_p.shape[1] - 1) // V
        q = torch.stack([insertion_target(t, keep, slots, V) for t, keep in zip(targets, keeps)]).to(log_p.device, log_p.dtype)
        nll = -(q * log_p.masked_fill(q == 0, 0.0)).sum(1)
        with torch.no_grad():
            stop_prob = log_p[:, -1].exp().mean()
        return {"loss": nll.mean(), "stop_probability": stop_prob, "_nats": nll.detach().sum(), "_tokens": torch.tensor(float(len(targets)))}


def build(config, ctx):
    source_length = ctx.get("source_length")
    eos = ctx.get("eos_id")
    pad = eos[0] if isinstance(eos, (list, tuple)) else (eos if eos is not None else 0)
    return Ilm(int(source_length) if source_length else None, int(pad))
