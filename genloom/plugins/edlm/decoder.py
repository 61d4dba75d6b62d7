"""The EDLM decoder: RADD's ancestral sampler with importance-resampled candidates.

Step i (t = times[i] -> s = times[i + 1]): network logits on the canvas; the reveal coins u (B, L)
and the first candidate's Gumbel noise are drawn exactly as RADD's sampler draws them; during the
first ``importance_steps`` steps, k - 1 more candidates are drawn, each candidate x0 (the canvas
with its masked positions filled) gets ``log w = log p_AR(x0) - log q(x0 | xt)`` (``energy: ar``)
or 0 (``energy: none``), and one is resampled; masked positions with ``u < (t - s) / t`` take the
chosen candidate's tokens.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder
from genloom.core.pattern import CAUSAL
from genloom.plugins.edlm.importance import resample
from genloom.toolkit.canvas import canvas_logits, init_canvas, prefix_commit
from genloom.toolkit.draft import load_guide


def time_grid(steps: int, eps: float) -> torch.Tensor:
    grid = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    grid[-1] = 0.0
    return grid


def gumbel(shape, generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))


def ar_log_prob(model, ids: torch.Tensor, valid: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """(N,) sum over ``scored`` positions of log p_AR(ids_j | ids_<j) (one causal pass, AR shift)."""
    logits = model(ids, valid=valid, pattern=CAUSAL).double()
    logp = torch.log_softmax(logits, -1)
    prev = torch.cat([logp[:, :1], logp[:, :-1]], 1)
    V = logp.shape[-1]
    tok = ids.clamp_max(V - 1)
    per = prev.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
    return torch.where(scored, per, torch.zeros_like(per)).sum(-1)


class EDLMDecoder(Decoder):
    def __init__(self, config, ctx, mask_id: int):
        super().__init__(config, ctx)
        self.mask_id = int(mask_id)
        self._energy_model = None

    @property
    def energy_model(self):
        if self._energy_model is None:
            self._energy_model = load_guide(self.config.energy_model, self.ctx, self.config.energy_seed, path="decoder.energy_model")
        return self._energy_model

    def start(self, session) -> None:
        init_canvas(session, self.mask_id)
        s = session.scratch
        s.update(times=time_grid(self.config.steps, self.config.eps), step_index=0, log_weights=[])

    def importance(self, session, candidates: torch.Tensor, logp: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """(B, k) log weights of the candidates (B, k, L)."""
        B, k, L = candidates.shape
        log_q = torch.where(masked[:, None], logp.double().unsqueeze(1).expand(B, k, L, -1).gather(-1, candidates.unsqueeze(-1)).squeeze(-1),
                            torch.zeros((B, k, L), dtype=torch.float64, device=candidates.device)).sum(-1)
        if self.config.energy == "none":
            return torch.zeros_like(log_q)
        valid = session.scratch["canvas_valid"]
        gen = torch.zeros_like(valid)
        gen[:, session.scratch["gen_start"]:] = True
        flat = candidates.reshape(B * k, L)
        session.metrics.count_forward("energy", 1)
        log_p = ar_log_prob(self.energy_model, flat, valid.repeat_interleave(k, 0), gen.repeat_interleave(k, 0)).reshape(B, k)
        return log_p - log_q  # = -E

    def propose(self, session):
        s = session.scratch
        c = self.config
        canvas = s["canvas"]
        masked = canvas == self.mask_id
        if s["step_index"] >= c.steps or not bool(masked.any()):
            s["done"] = True
            return canvas
        logits = canvas_logits(session, canvas)
        t, t_next = s["times"][s["step_index"]], s["times"][s["step_index"] + 1]
        p_unmask = float((t - t_next) / t)
        u = torch.rand(canvas.shape, generator=session.generator, device=canvas.device)
        clean = logits.clone()
        clean[..., self.mask_id] = float("-inf")
        logp = torch.log_softmax(clean.float() / c.temperature, dim=-1)
        first = (logp + gumbel(logp.shape, session.generator, canvas.device)).argmax(-1)
        active = c.importance_steps is None or s["step_index"] < c.importance_steps
        if active and c.candidates > 1:
            more = [(logp + gumbel(logp.shape, session.generator, canvas.device)).argmax(-1) for _ in range(c.candidates - 1)]
            cands = torch.stack([first, *more], 1)
            cands = torch.where(masked[:, None], cands, canvas[:, None])
            log_w = self.importance(session, cands, logp, masked)
            s["log_weights"].append(log_w.detach().cpu())
            pick = resample(log_w, session.generator)
            x0 = cands.gather(1, pick.reshape(-1, 1, 1).expand(-1, 1, canvas.shape[1])).squeeze(1)
        else:
            x0 = torch.where(masked, first, canvas)
        unmask = masked & (u < p_unmask)
        s["canvas"] = torch.where(unmask, x0, canvas)
        s["step_index"] += 1
        session.metrics.extra["importance_steps_done"] = len(s["log_weights"])
        return s["canvas"]

    def verify(self, session, proposal) -> Commit:
        s = session.scratch
        return prefix_commit(proposal, s["gen_start"], s["committed"], self.mask_id)

    def advance(self, session, commit: Commit) -> None:
        s = session.scratch
        s["committed"] += commit.counts.to(s["committed"].device)
        if s.get("done") and not bool(commit.counts.any()):
            session.finished[:] = True


def build(config, ctx) -> EDLMDecoder:
    return EDLMDecoder(config, ctx, ctx.mask_id)
