"""The hyperschedule decoder: the reverse walk t = T .. 1 over a canvas of masks.

``propose`` runs one step: the network's predictions for the canvas; each masked generated
position j is revealed with probability ``w(j, t) = (m(j,t) - m(j,t-1)) / m(j,t)`` (all remaining
ones at t = 1) and takes the prediction; with ``correct``, decoded positions whose prediction is
another token with probability >= ``correct_threshold`` are revised. ``verify`` commits the newly
completed left prefix (everything at the end when correcting, since committed tokens are final).

With causal attention and ``cache``, the clean prefix before the first masked column is fixed
(causal rows never see what follows and a decoded token never changes), so its keys/values are
kept and each step recomputes only the columns from the cached length on; the step's fixed
prefix is kept in the cache after the pass, the rest rolled back. The logits equal the uncached
pass's (tested).
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder
from genloom.core.pattern import CAUSAL
from genloom.plugins.hyperschedules.objective import denoise, schedule_for
from genloom.toolkit.canvas import init_canvas, predict, prefix_commit


class HyperscheduleDecoder(Decoder):
    def __init__(self, config, ctx, mask_id: int):
        super().__init__(config, ctx)
        self.mask_id = int(mask_id)
        if config.correct and config.cache and config.attention == "causal":
            raise ValueError("correct: true revises decoded tokens, so the causal prefix cache cannot be used (set cache: false)")

    def start(self, session) -> None:
        init_canvas(session, self.mask_id)
        s = session.scratch
        G = session.max_new_tokens
        s["schedule"] = schedule_for(self.config, G)
        s["t"] = s["schedule"].steps
        s["positions"] = 0
        s["revised"] = 0
        s["cached"] = 0  # canvas columns whose keys/values are in the cache (same for every row)
        if self.config.attention == "causal" and self.config.cache:
            B, L = s["canvas"].shape
            session.state = session.model.init_state(B, L + 1)

    def network(self, session) -> torch.Tensor:
        s = session.scratch
        canvas, valid = s["canvas"], s["canvas_valid"]
        if self.config.attention == "full" or not self.config.cache:
            s["positions"] += canvas.numel()
            return denoise(_Counted(session), canvas, self.config.attention, valid)
        c = s["cached"]
        out = session.forward(canvas[:, c:], state=session.state, valid=valid[:, c:], pattern=CAUSAL)
        s["positions"] += out.shape[0] * out.shape[1]
        gen = canvas[:, s["gen_start"]:] == self.mask_id
        first_mask = s["gen_start"] + int(torch.where(gen.any(-1), gen.long().argmax(-1), torch.full_like(gen[:, 0], gen.shape[1], dtype=torch.long)).min())
        keep = first_mask - c  # columns of this pass that are fixed for good
        lengths = s.setdefault("cache_lengths", torch.zeros(canvas.shape[0], dtype=torch.long, device=canvas.device))
        s["cache_lengths"] = lengths + valid[:, c:first_mask].sum(1)
        session.state.rollback(s["cache_lengths"])
        s["cached"] = first_mask
        previous = s.get("carry")
        s["carry"] = out[:, keep - 1:keep] if keep > 0 else previous
        first = previous if previous is not None else out[:, :1]
        shifted = torch.cat([first, out[:, :-1]], 1)
        full = torch.zeros((canvas.shape[0], canvas.shape[1], out.shape[-1]), dtype=out.dtype, device=out.device)
        full[:, c:] = shifted
        return full

    def propose(self, session):
        s = session.scratch
        t = s["t"]
        if t <= 0 or not bool((s["canvas"] == self.mask_id).any()):
            s["t"] = 0
            return s["canvas"]
        logits = self.network(session)
        tokens, confidence, probs = predict(logits, self.mask_id, self.config.temperature, session.generator)
        canvas = s["canvas"]
        P = s["gen_start"]
        gen_pos = torch.zeros_like(canvas)
        gen_pos[:, P:] = torch.arange(canvas.shape[1] - P, device=canvas.device)
        is_gen = torch.zeros_like(canvas, dtype=torch.bool)
        is_gen[:, P:] = True
        masked = canvas == self.mask_id
        w = s["schedule"].reveal_probability(gen_pos, torch.tensor(t, device=canvas.device))
        u = torch.rand(canvas.shape, generator=session.generator, device=canvas.device, dtype=torch.float64)
        reveal = masked & is_gen & (u < w)
        new = torch.where(reveal, tokens, canvas)
        if self.config.correct:
            best_p, best = probs.max(-1)
            revise = is_gen & ~masked & (best != canvas) & (best_p >= self.config.correct_threshold)
            new = torch.where(revise, best, new)
            s["revised"] += int(revise.sum())
        s["canvas"] = new
        s["t"] = t - 1
        session.metrics.extra.update(positions_computed=s["positions"], revised=s["revised"])
        return new

    def verify(self, session, proposal) -> Commit:
        s = session.scratch
        if self.config.correct and s["t"] > 0 and bool((proposal == self.mask_id).any()):
            B = proposal.shape[0]
            return Commit(proposal[:, :0], torch.zeros(B, dtype=torch.long, device=proposal.device))
        return prefix_commit(proposal, s["gen_start"], s["committed"], self.mask_id)

    def advance(self, session, commit: Commit) -> None:
        s = session.scratch
        s["committed"] += commit.counts.to(s["committed"].device)
        if s["t"] <= 0 and not bool(commit.counts.any()):
            session.finished[:] = True


class _Counted:
    """Calls the model through the session so the forward pass is counted."""

    def __init__(self, session):
        self.session = session

    def __call__(self, ids, **kw):
        return self.session.forward(ids, **kw)


def build(config, ctx) -> HyperscheduleDecoder:
    return HyperscheduleDecoder(config, ctx, ctx.mask_id)
