"""The Prophet decoder: confidence-based unmasking with an early "all-in" commit."""

from __future__ import annotations

import torch

from genloom.core.pattern import FULL
from genloom.toolkit.canvas import ConfidenceCanvasDecoder, predict, top_k_positions


def top2_gap(logits: torch.Tensor, mask_id: int, space: str = "probability", probs: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) gap between the two best clean-token candidates, on probabilities or on logits (float64).

    ``probs``: the clean-token probabilities if already computed (saves a softmax).
    """
    if space == "probability":
        if probs is None:
            clean = logits.double().clone()
            clean[..., mask_id] = float("-inf")
            probs = torch.softmax(clean, -1)
        values = probs
    else:
        values = logits.double().clone()
        values[..., mask_id] = float("-inf")
    top = values.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def answer_gap(gap: torch.Tensor, masked: torch.Tensor, answer: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Per row: the gap combined over still-masked answer positions (all masked ones if none); nan if nothing is masked."""
    use = masked & answer
    use = torch.where(use.any(-1, keepdim=True), use, masked)
    if reduce == "min":
        out = torch.where(use, gap, torch.full_like(gap, float("inf"))).min(-1).values
    else:
        out = torch.where(use, gap, torch.zeros_like(gap)).sum(-1) / use.sum(-1).clamp_min(1)
    return torch.where(use.any(-1), out, torch.full_like(out, float("nan")))


def staged_threshold(progress: float, thresholds, boundaries) -> float:
    """The threshold for decoding progress in [0, 1): strict early, lenient late."""
    for bound, tau in zip(boundaries, thresholds):
        if progress < bound:
            return float(tau)
    return float(thresholds[-1])


class Prophet(ConfidenceCanvasDecoder):
    """The baseline confidence sampler; a row whose answer gap clears the threshold is finished in one step."""

    def start(self, session) -> None:
        super().start(session)
        B = session.batch_size
        device = session.prompt_ids.device
        s = session.scratch
        s["row_steps"] = torch.zeros(B, dtype=torch.long, device=device)
        s["gaps"] = []
        s["early_commit_step"] = torch.full((B,), -1, dtype=torch.long, device=device)
        pos = torch.arange(s["canvas"].shape[1], device=device)
        length = self.config.answer_length or session.max_new_tokens
        s["answer"] = (pos >= s["canvas"].shape[1] - min(length, session.max_new_tokens)).reshape(1, -1)
        self.stats = {}

    def network_rows(self, session, rows: torch.Tensor) -> torch.Tensor:
        """Logits for the rows that still have masks (one counted call); other rows get zeros."""
        s = session.scratch
        if bool(rows.all()):
            return self.network(session)
        logits = session.forward(s["canvas"][rows], valid=s["canvas_valid"][rows], pattern=FULL)
        if session.processors:
            P = s["gen_start"]
            hist = session.history()[rows]
            logits = torch.cat([logits[:, :P], session.process(logits[:, P:], hist)], 1)
        full = logits.new_zeros((s["canvas"].shape[0], *logits.shape[1:]))
        full[rows] = logits
        return full

    def step(self, session) -> None:
        s = session.scratch
        c = self.config
        masked = s["canvas"] == self.mask_id
        active = masked.any(-1)
        logits = self.network_rows(session, active)
        tokens, confidence, probs = predict(logits, self.mask_id, c.temperature, session.generator)
        # Prophet's check on this step's logits: no extra network call
        progress = s["step_index"] / s["total_steps"]
        tau = staged_threshold(progress, c.thresholds, c.progress_boundaries)
        gap = answer_gap(top2_gap(logits, self.mask_id, c.gap_space, probs), masked, s["answer"], c.reduce)
        all_in = active & (gap >= tau)
        s["gaps"].append(gap.clone())
        # the baseline step for the others (the schedule is computed for every row, as the baseline does)
        allowed = masked & self.region(session)
        chosen = top_k_positions(confidence, allowed, self.n_transfer(session, masked))
        chosen = torch.where(all_in.reshape(-1, 1), masked, chosen)
        s["canvas"] = torch.where(chosen, tokens, s["canvas"])
        s["row_steps"] += active.long()
        s["early_commit_step"] = torch.where(all_in & (s["early_commit_step"] < 0), torch.full_like(s["early_commit_step"], s["step_index"]), s["early_commit_step"])
        s["step_index"] += 1
        self.stats = {"row_steps": s["row_steps"].clone(), "early_commit_step": s["early_commit_step"].clone(),
                      "total_steps": s["total_steps"], "gaps": torch.stack(s["gaps"], 1)}


def build(config, ctx) -> Prophet:
    return Prophet(config, ctx, ctx.mask_id)
