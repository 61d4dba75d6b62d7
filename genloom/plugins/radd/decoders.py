"""RADD's cached ancestral sampler and the confidence-based masked-diffusion sampler as decoders.

Both run on the core's propose -> verify -> commit loop over a fixed canvas: the prompt (left
padded, as the session gives it) followed by ``max_new_tokens`` mask tokens, attended with the
``full`` pattern. ``propose`` performs one unmasking step (at most one network call, counted by the
session); ``verify`` commits the part of the generated region that has become a fully unmasked
left prefix since the last commit, so the session's stop conditions and metrics see tokens in
order. When a sequence stops (EOS, stop string) the rest of its canvas is discarded.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder
from genloom.plugins.radd.sampling import AncestralCanvas, ConfidenceCanvas
from genloom.toolkit.canvas import canvas_logits, init_canvas, prefix_commit


class CanvasDecoder(Decoder):
    """Shared plumbing: canvas set-up, network calls, prefix commits."""

    def __init__(self, config, ctx, mask_id: int):
        super().__init__(config, ctx)
        self.mask_id = int(mask_id)

    # -- canvas -----------------------------------------------------------------------------
    def start(self, session) -> None:
        init_canvas(session, self.mask_id)
        s = session.scratch
        s["sampler"] = self.make_sampler(session, s.pop("canvas"), s["gen_start"])

    def make_sampler(self, session, canvas: torch.Tensor, gen_start: int):
        raise NotImplementedError

    def network(self, session, canvas: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the clean-data conditionals on ``canvas`` (one counted forward pass).

        ``rows`` (B,) bool: ``canvas`` holds only these rows of the batch (a sub-batch call).
        """
        return canvas_logits(session, canvas, rows)

    # -- the loop -----------------------------------------------------------------------------
    def propose(self, session) -> torch.Tensor:
        sampler = session.scratch["sampler"]
        if not sampler.done:
            self.step(session, sampler)
            self.stats = {"steps": sampler.step_index, "network_calls": sampler.calls,
                          "row_calls": getattr(sampler, "row_calls", None)}
        return sampler.canvas

    def step(self, session, sampler) -> None:
        raise NotImplementedError

    def verify(self, session, proposal: torch.Tensor) -> Commit:
        return prefix_commit(proposal, session.scratch["gen_start"], session.scratch["committed"], self.mask_id)

    def advance(self, session, commit: Commit) -> None:
        session.scratch["committed"] += commit.counts.to(session.scratch["committed"].device)
        if session.scratch["sampler"].done and not bool(commit.counts.any()):
            session.finished[:] = True  # nothing left to unmask or commit


class RADDSampler(CanvasDecoder):
    """RADD's reverse process with the cache: NFE = number of distinct noisy states."""

    def make_sampler(self, session, canvas, gen_start):
        c = self.config
        return AncestralCanvas(canvas, self.mask_id, c.steps, cache=c.cache, eps=c.eps, temperature=c.temperature,
                               generator=session.generator)

    def step(self, session, sampler) -> None:
        sampler.step(lambda ids, rows: self.network(session, ids, rows))


class MaskedDiffusion(CanvasDecoder):
    """Greedy max-confidence unmasking (the standard masked-diffusion sampler)."""

    def make_sampler(self, session, canvas, gen_start):
        c = self.config
        steps = c.steps or session.max_new_tokens
        return ConfidenceCanvas(canvas, self.mask_id, gen_start, steps, block_length=c.block_length,
                                temperature=c.temperature, remasking=c.remasking, generator=session.generator)

    def step(self, session, sampler) -> None:
        sampler.step(self.network(session, sampler.canvas))


def build_radd(config, ctx) -> RADDSampler:
    return RADDSampler(config, ctx, ctx.mask_id)


def build_masked_diffusion(config, ctx) -> MaskedDiffusion:
    return MaskedDiffusion(config, ctx, ctx.mask_id)
