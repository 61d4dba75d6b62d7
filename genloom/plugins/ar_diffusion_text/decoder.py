"""AR-Diffusion decoding on the shared loop: every token walks its own timesteps down.

``sample`` builds the decoding table (``timesteps.decoding_table``: K even decrements of the
sentence-level t, each row the N tokens' timesteps, repeated rows dropped) and runs the toolkit's
reverse process over it (``embedding_reverse_process``): one network evaluation per row, each token
moved from its timestep to the next row's (DDIM, or an ancestral draw), the source re-imposed,
nearest-embedding rounding at the end.
"""

from __future__ import annotations

from genloom.toolkit import embedding_diffusion as ed

from .timesteps import decoding_table


class ArDiffusionDecoder(ed.DiffusionSeq2SeqDecoder):
    name = "ar-diffusion"

    @property
    def anchor(self) -> float:
        if self.config.equal_speeds:
            return float("inf")
        if self.config.anchor is not None:
            return float(self.config.anchor)
        return float(self.ctx.get("ar_diffusion_anchor", 2.0)) if self.ctx is not None else 2.0

    def table(self, schedule):
        return decoding_table(self.config.steps, int(self.ctx.get("target_length")), schedule.steps, self.anchor)

    def sample(self, session, source):
        schedule = ed.schedule_of(session.model.ctx)
        times = self.table(schedule)[:, None, :]  # (K' + 1, 1, N): the same table for every sequence
        ids, result = ed.embedding_reverse_process(session.model, source, times, schedule, stochastic=self.config.stochastic, clamp=self.config.clamp, generator=session.generator)
        session.metrics.count_forward("target", result.passes)
        return ids


def build(config, ctx):
    ed.target_length_of(ctx, "the ar-diffusion decoder")
    return ArDiffusionDecoder(config, ctx)
