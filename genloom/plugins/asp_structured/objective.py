"""The ASP objective: teacher-forced negative log-likelihood of the action sequence.

Batch: ``SourceTargetPairs`` samples (``ids`` = ``[source block | actions, end, padding]``). The
backbone reads the whole row once under ``prefix(source_length)``; for every target step ``k``
(predicted from the hidden state at position ``S - 1 + k``) the loss adds

- the action-kind cross-entropy (copy / open / close / link / end),
- at a close, the label cross-entropy from ``[h_open ; h_now]`` (``h_open`` at the span's open),
- at a link, the pointer cross-entropy over (earlier span, relation), the earlier spans' keys
  coming from the hidden states of their own open and close actions,

which is ``-log p(y_k | y_<k, x)`` under the head's factorisation; ``loss`` is its mean over the
target steps. The structure of each row (which span is open, which spans are closed) is read off
its actions with the same state machine the decoder uses (:class:`~.actions.ActionState`).
"""

from __future__ import annotations

import math

import torch

from genloom.core.data import pad_id_of
from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import prefix

from .actions import CLOSE, LINK, ActionLayout, ActionState
from .head import AspHead, wide

IGNORE = -100


def source_tokens(block, pad_id: int) -> list[int]:
    """The input tokens of a source block (its left padding removed)."""
    block = [int(t) for t in block]
    i = 0
    while i < len(block) and block[i] == pad_id:
        i += 1
    return block[i:]


def teacher_forcing(actions, tokens, layout: ActionLayout) -> dict[str, list]:
    """Per target step ``k`` (the end action included): ``kind``, ``open_step`` (target index of
    the innermost open span's open action before step k, -1: none), ``label`` and ``target`` /
    ``relation`` (the gold detail of a close / link, else -100), ``link_from`` (how many earlier
    spans a link at step k may point to); per span in close order: ``span_open``, ``span_close``."""
    state = ActionState(tokens, layout)
    out = {k: [] for k in ("kind", "open_step", "label", "target", "relation", "link_from")}
    for a in actions:
        kind = layout.kind(a)
        out["kind"].append(kind)
        out["open_step"].append(state.stack[-1][1] if state.stack else -1)
        out["label"].append(layout.label_of(a) if kind == CLOSE else IGNORE)
        t, r = layout.link_of(a) if kind == LINK else (IGNORE, IGNORE)
        out["target"].append(t)
        out["relation"].append(r)
        out["link_from"].append(state.link_from or 0)
        state.step(int(a))
        if state.done:
            break
    out["span_open"] = [s.open_step for s in state.spans]
    out["span_close"] = [s.close_step for s in state.spans]
    return out


def _pad(rows, width, value):
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class AspObjective(Objective):
    def __init__(self, layout: ActionLayout, source_length: int, pad_id: int, label_weight: float = 1.0, pointer_weight: float = 1.0):
        super().__init__()
        self.layout = layout
        self.source_length = source_length
        self.pad_id = pad_id
        self.label_weight, self.pointer_weight = label_weight, pointer_weight
        self.pattern = prefix(source_length)

    def parse(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forcing indices of a batch, padded: per step (B, T) and per span (B, M)."""
        S = self.source_length
        rows = []
        for row in ids.tolist():
            tokens = source_tokens(row[:S], self.pad_id)
            target = row[S:]
            end = target.index(self.layout.eos_id) + 1 if self.layout.eos_id in target else len(target)
            rows.append(teacher_forcing(target[:end], tokens, self.layout))
        T = max(len(r["kind"]) for r in rows)
        M = max(1, max(len(r["span_open"]) for r in rows))
        out = {k: _pad([r[k] for r in rows], T, IGNORE if k in ("kind", "label", "target", "relation") else 0) for k in ("kind", "label", "target", "relation", "link_from")}
        out["open_step"] = _pad([r["open_step"] for r in rows], T, -1)
        out["span_open"] = _pad([r["span_open"] for r in rows], M, 0)
        out["span_close"] = _pad([r["span_close"] for r in rows], M, 0)
        out["span_valid"] = _pad([[1] * len(r["span_open"]) for r in rows], M, 0).bool()
        return {k: v.to(ids.device) for k, v in out.items()}

    def terms(self, model, batch) -> dict[str, torch.Tensor]:
        """Summed negative log-likelihoods (kind, label, pointer) and counts of a batch."""
        ids = batch["ids"]
        S = self.source_length
        p = self.parse(ids)
        T = p["kind"].shape[1]
        hid = model.hidden(ids[:, :-1], pattern=self.pattern)
        B, _, D = hid.shape
        target_h = hid[:, S:]  # hidden state at the input of target action k
        now = hid[:, S - 1 : S - 1 + T]
        if now.shape[1] < T:
            raise ConfigError(f"target actions ({T}) do not fit the batch's target block", path="data.target_length")
        head = model.head
        if not isinstance(head, AspHead):
            raise ConfigError(f"the asp objective needs the 'asp' head (labels and pointers from span states), got {type(head).__name__}", path="head")

        def at(index):  # hidden states at target steps ``index`` (B, ...)
            flat = index.clamp(0, target_h.shape[1] - 1).reshape(B, -1)
            return target_h.gather(1, flat[..., None].expand(-1, -1, D)).view(*index.shape, D)

        step = p["kind"] != IGNORE
        kind_nll = torch.nn.functional.cross_entropy(wide(head(now)).transpose(1, 2), p["kind"], ignore_index=IGNORE, reduction="sum")
        close = p["label"] != IGNORE
        label_nll = wide(now.new_zeros(()))
        if close.any():
            logits = wide(head.label_logits(at(p["open_step"])[close], now[close]))
            label_nll = torch.nn.functional.cross_entropy(logits, p["label"][close], reduction="sum")
        link = p["target"] != IGNORE
        pointer_nll = wide(now.new_zeros(()))
        if link.any():
            keys = head.span_keys(at(p["span_open"]), at(p["span_close"]))  # (B, M, P)
            M = keys.shape[1]
            valid = (torch.arange(M, device=ids.device)[None, None] < p["link_from"][..., None]) & p["span_valid"][:, None]
            scores = wide(head.pointer_logits(now, keys, valid)).flatten(2)  # (B, T, M * R)
            gold = p["target"] * len(self.layout.relations) + p["relation"]
            pointer_nll = torch.nn.functional.cross_entropy(scores[link], gold[link], reduction="sum")
        return {"kind": kind_nll, "label": label_nll, "pointer": pointer_nll, "steps": step.sum(), "closes": close.sum(), "links": link.sum()}

    def loss(self, model, batch):
        t = self.terms(model, batch)
        steps = t["steps"].clamp_min(1).float()
        total = t["kind"] + self.label_weight * t["label"] + self.pointer_weight * t["pointer"]
        nats = (t["kind"] + t["label"] + t["pointer"]).detach()
        return {
            "loss": total / steps,
            "bits_per_action": nats / steps / math.log(2),
            "label_nll": t["label"].detach() / t["closes"].clamp_min(1),
            "pointer_nll": t["pointer"].detach() / t["links"].clamp_min(1),
            "_nats": nats,
            "_tokens": steps.detach(),
        }

    def evaluate_run(self, gen, options: dict) -> str:
        """``genloom evaluate RUN``: span and link F1 of constrained greedy decoding on a held-out split."""
        from .evaluate import evaluate_command

        return evaluate_command(gen, options)


def build(config, ctx):
    from .data import layout_of

    source_length = ctx.get("source_length")
    if not source_length:
        raise ConfigError("asp needs source-conditioned data (a data set that publishes source_length, e.g. 'asp-code')", path="objective")
    return AspObjective(layout_of(ctx, "objective"), int(source_length), pad_id_of(ctx.tokenizer), config.label_weight, config.pointer_weight)
