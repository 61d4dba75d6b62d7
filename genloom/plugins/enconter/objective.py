"""The ENCONTER objective: per-slot insertion targets along the balanced-binary-tree oracle.

Per target: draw up to ``max_entities`` non-overlapping entity spans (contiguous runs of target
tokens, the constraints the decoder will start from), run the oracle from the canvas of those
spans (``oracle.py``) and pick one of its states uniformly (the complete state included, whose
every slot must learn "no insertion"). The label of each slot of that canvas is the token at the
middle of its missing range, or *no insertion*; slots inside an entity span are locked, as at
inference. The loss is the mean cross-entropy over the open slots.
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import FULL
from genloom.toolkit.anyorder import prefix_and_targets

from .head import enconter_head, slot_log_probs
from .oracle import middle, oracle_states, slot_ranges


def entity_spans(n: int, max_entities: int, max_length: int, generator=None) -> list[tuple[int, int]]:
    """Up to ``max_entities`` random non-overlapping, non-adjacent spans [start, end) of a length-n target, sorted."""
    spans: list[tuple[int, int]] = []
    count = int(torch.randint(0, max_entities + 1, (1,), generator=generator))
    for _ in range(4 * count):
        if len(spans) >= count or n == 0:
            break
        length = int(torch.randint(1, min(max_length, n) + 1, (1,), generator=generator))
        start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
        if all(start > e or start + length < s for s, e in spans):
            spans.append((start, start + length))
    return sorted(spans)


def locked_slots(kept: list[int], spans: list[tuple[int, int]]) -> set[int]:
    """Slots of the canvas holding target indices ``kept`` that lie inside an entity span."""
    inside = {i for s, e in spans for i in range(s + 1, e)}  # index i's left slot is inside when i-1 and i share a span
    return {k for k, i in enumerate(kept) if i in inside and k > 0 and kept[k - 1] == i - 1}


class Enconter(Objective):
    pattern = FULL

    def __init__(self, source_length: int | None, pad_id: int, max_entities: int, max_entity_length: int):
        super().__init__()
        self.source_length, self.pad_id = source_length, pad_id
        self.max_entities, self.max_entity_length = max_entities, max_entity_length

    def loss(self, model, batch):
        enconter_head(model)
        prefix, targets = prefix_and_targets(batch, self.source_length)
        canvases, locks, labels = [], [], []
        V = model.head.vocab_size
        for t in targets:
            spans = entity_spans(len(t), self.max_entities, self.max_entity_length)
            states = oracle_states([i for s, e in spans for i in range(s, e)], len(t))
            kept = states[int(torch.randint(0, len(states), (1,)))]
            canvases.append([t[i] for i in kept])
            locks.append(locked_slots(kept, spans))
            labels.append([V if (m := middle(lo, hi)) is None else t[m] for lo, hi in slot_ranges(kept, len(t))])
        log_p = slot_log_probs(model, prefix, canvases, locks, self.pad_id)
        target = torch.full(log_p.shape[:2], -1, dtype=torch.long, device=log_p.device)
        for b, row in enumerate(labels):
            target[b, : len(row)] = torch.tensor(row, device=log_p.device)
            for s in locks[b]:
                target[b, s] = -1  # a locked slot is forced to "no insertion": nothing to learn
        scored = target >= 0
        nll = torch.where(scored, -log_p.gather(2, target.clamp_min(0)[:, :, None]).squeeze(2), 0.0)
        count = scored.sum().clamp_min(1).to(nll.dtype)
        total = nll.sum()
        return {"loss": total / count, "_nats": total.detach(), "_tokens": count.detach()}


def build(config, ctx):
    source_length = ctx.get("source_length")
    eos = ctx.get("eos_id")
    pad = eos[0] if isinstance(eos, (list, tuple)) else (eos if eos is not None else 0)
    return Enconter(int(source_length) if source_length else None, int(pad), config.max_entities, config.max_entity_length)
