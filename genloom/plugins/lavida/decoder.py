"""The LaViDa decoder: answer unmasking against a once-computed image prefix, timestep shifting.

``start``: the prompt's pixel tokens go through the objective's encoder; with ``cache`` the prefix
embeddings run once through the backbone into a KV cache (the prefix attends only to itself, as in
training, so its keys/values never change). Each step: the answer canvas (masks and decoded
tokens) runs against the cache and is rolled back; the most confident masked positions are
revealed so that ``G * shift(1 - k / S)`` masks remain after step k (``shift`` the timestep shift).
``cache: false`` recomputes the prefix with the answer at every step (the reference).
"""

from __future__ import annotations

import math

import torch

from genloom.core.generation import Commit, Decoder
from genloom.core.pattern import FULL
from genloom.plugins.lavida.objective import prefixed_logits
from genloom.toolkit.canvas import predict, prefix_commit, top_k_positions


def shift(t: float, s: float) -> float:
    """The timestep shift s t / (1 + (s - 1) t): monotone on [0, 1], shift(0) = 0, shift(1) = 1, s = 1 the identity."""
    return s * t / (1.0 + (s - 1.0) * t)


def masks_left(G: int, k: int, steps: int, s: float) -> int:
    """Masks remaining after step k of ``steps`` (0 after the last)."""
    return 0 if k >= steps else int(math.floor(G * shift(1.0 - k / steps, s) + 1e-9))


class LaViDaDecoder(Decoder):
    def __init__(self, config, ctx, mask_id: int):
        super().__init__(config, ctx)
        self.mask_id = int(mask_id)

    def start(self, session) -> None:
        model = session.model
        encoder = model.objective.encoder
        B, G = session.batch_size, session.max_new_tokens
        s = session.scratch
        expected = encoder.side * encoder.side
        if not bool(session.prompt_valid.all()) or session.prompt_ids.shape[1] != expected:
            from genloom.core.errors import GenerationError

            raise GenerationError(f"lavida prompts are images: {expected} pixel tokens each (got lengths {session.prompt_valid.sum(1).tolist()})")
        s["prefix"] = encoder(session.prompt_ids)
        s["canvas"] = torch.full((B, G), self.mask_id, dtype=torch.long, device=session.device)
        s.update(step=0, steps=self.config.steps or G, committed=torch.zeros(B, dtype=torch.long, device=session.device), positions=0)
        if self.config.cache:
            session.state = model.init_state(B, s["prefix"].shape[1] + G + 1)
            from genloom.core import kernels

            with kernels.scope(getattr(model.ctx, "kernels", None)):
                model.backbone(s["prefix"], pattern=FULL, state=session.state)
            session.metrics.count_forward("target")
            s["positions"] += B * s["prefix"].shape[1]
            s["prefix_lengths"] = session.state.lengths.clone()

    def network(self, session) -> torch.Tensor:
        s = session.scratch
        model = session.model
        session.metrics.count_forward("target")
        if self.config.cache:
            out = prefixed_logits(model, s["prefix"], s["canvas"], state=session.state, pattern=FULL)
            session.state.rollback(s["prefix_lengths"])
            s["positions"] += s["canvas"].numel()
            return out
        s["positions"] += s["canvas"].numel() + s["prefix"].shape[0] * s["prefix"].shape[1]
        return prefixed_logits(model, s["prefix"], s["canvas"])

    def propose(self, session):
        s = session.scratch
        canvas = s["canvas"]
        masked = canvas == self.mask_id
        if not bool(masked.any()):
            return canvas
        logits = self.network(session)
        s["last_logits"] = logits
        tokens, confidence, _ = predict(logits, self.mask_id, self.config.temperature, session.generator)
        G = canvas.shape[1]
        k = s["step"] + 1
        target_left = masks_left(G, k, s["steps"], self.config.timestep_shift)
        reveal = (masked.sum(-1) - target_left).clamp_min(1)
        chosen = top_k_positions(confidence, masked, reveal)
        s["canvas"] = torch.where(chosen, tokens, canvas)
        s["step"] = k
        session.metrics.extra.update(positions_computed=s["positions"], decode_steps=k)
        return s["canvas"]

    def verify(self, session, proposal) -> Commit:
        # the canvas is the answer alone: its generated region starts at column 0
        return prefix_commit(proposal, 0, session.scratch["committed"], self.mask_id)

    def advance(self, session, commit: Commit) -> None:
        s = session.scratch
        s["committed"] += commit.counts.to(s["committed"].device)
        if not bool((s["canvas"] == self.mask_id).any()) and not bool(commit.counts.any()):
            session.finished[:] = True


def build(config, ctx) -> LaViDaDecoder:
    return LaViDaDecoder(config, ctx, ctx.mask_id)
