"""The EdiT5 objective: tagging + pointing + insertion losses, one backbone pass per batch.

Batch: ``SourceTargetPairs`` samples (``ids`` = ``[source block | target, eos, padding]``, ``mask``
scoring the target and its end-of-sequence id). For each pair the gold edit is derived from the
(source block, target) ids (``labels.derive_edits``; cached), and the model reads
``[source block | start, insertion sequence without its last token]`` under ``prefix(S)``:

    loss = tag_weight * CE(tags) + pointer_weight * CE(successors) + insertion_weight * CE(insertions)

each term a mean: over the source positions (padding included: it is always deleted), over the
pointing rows (start and every kept token but the last), over the insertion-sequence tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import prefix

from .head import edit5_head, end_id, hidden
from .labels import derive_edits, insertion_sequence
from .pointer import pointer_loss


class Edit5Objective(Objective):
    def __init__(self, source_length: int, end_id: int, min_span: int = 1, tag_weight: float = 1.0, pointer_weight: float = 1.0, insertion_weight: float = 1.0):
        super().__init__()
        self.source_length, self.end_id, self.min_span = source_length, end_id, min_span
        self.weights = (tag_weight, pointer_weight, insertion_weight)
        self.pattern = prefix(source_length)

    def gold(self, batch: dict):
        """Per row: (source block ids, target ids without end-of-sequence, gold ``Edits``)."""
        S = self.source_length
        ids = batch["ids"]
        lengths = (batch["mask"].sum(1) - 1).tolist()
        out = []
        for b in range(ids.shape[0]):
            source, target = ids[b, :S].tolist(), ids[b, S : S + int(lengths[b])].tolist()
            out.append((source, target, derive_edits(source, target, self.min_span)))
        return out

    def loss(self, model, batch):
        head = edit5_head(model)
        S, end = self.source_length, self.end_id
        ids = batch["ids"]
        B, device = ids.shape[0], ids.device
        gold = self.gold(batch)
        sequences = [insertion_sequence(e, head.slot_id, end) for _, _, e in gold]
        L = max(len(s) for s in sequences)
        dec_in = torch.full((B, L), end, dtype=torch.long, device=device)
        dec_target = torch.full((B, L), end, dtype=torch.long, device=device)
        dec_mask = torch.zeros((B, L), dtype=torch.bool, device=device)
        dec_in[:, 0] = head.start_id
        for b, seq in enumerate(sequences):
            dec_in[b, 1 : len(seq)] = torch.tensor(seq[:-1], device=device)
            dec_target[b, : len(seq)] = torch.tensor(seq, device=device)
            dec_mask[b, : len(seq)] = True
        keep = torch.tensor([list(e.keep) for _, _, e in gold], dtype=torch.long, device=device)

        h = hidden(model, torch.cat([ids[:, :S], dec_in], 1))
        h_src, h_dec = h[:, :S], h[:, S:]
        tag_logits = head.tag_logits(h_src).float()
        tag_loss = nn.functional.cross_entropy(tag_logits.flatten(0, 1), keep.flatten())
        p_nll, p_rows, p_correct = pointer_loss(head.pointer_scores(h_src), keep, [list(e.order) for _, _, e in gold])
        p_loss = p_nll / p_rows.clamp_min(1.0).to(p_nll.device)
        ins_logits = head.insertion_logits(h_dec, h_src).float()
        ins_nll = nn.functional.cross_entropy(ins_logits.flatten(0, 1), dec_target.flatten(), reduction="none").view(B, L)
        ins_loss = (ins_nll * dec_mask).sum() / dec_mask.sum()
        wt, wp, wi = self.weights
        with torch.no_grad():
            ins_correct = ((ins_logits.argmax(-1) == dec_target) | ~dec_mask).all(1).float().mean()
            steps = float(sum(len(s) for s in sequences)) / B
            outputs = float(sum(len(t) + 1 for _, t, _ in gold)) / B
        return {
            "loss": wt * tag_loss + wp * p_loss + wi * ins_loss,
            "tag_loss": tag_loss.detach(),
            "pointer_loss": p_loss.detach(),
            "insertion_loss": ins_loss.detach(),
            "tag_accuracy": (tag_logits.argmax(-1) == keep).float().mean(),
            "pointer_accuracy": p_correct / p_rows.clamp_min(1.0),
            "insertion_exact": ins_correct,
            "insertion_steps": torch.tensor(steps),
            "output_tokens": torch.tensor(outputs),
        }


def build(config, ctx):
    source_length = ctx.get("source_length")
    if not source_length:
        raise ConfigError("the edit5 objective needs source-conditioned data (a data set that publishes source_length, e.g. 'edit-fusion')", path="objective")
    return Edit5Objective(int(source_length), end_id(ctx, path="objective"), config.min_span, config.tag_weight, config.pointer_weight, config.insertion_weight)
