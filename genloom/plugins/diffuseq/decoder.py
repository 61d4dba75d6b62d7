"""DiffuSeq decoding on the shared loop: the reverse process over the target block.

One round (``genloom.toolkit.embedding_diffusion.embedding_reverse_process``): draw ``z_T`` for the
target block, set the source block to its clean embeddings, then for each of ``steps`` timesteps
(one shared by every target position, on an even grid from T to 0) predict ``z_0``, clamp it to
the nearest token embeddings (the clamping trick, optional), move to the next timestep (DDIM, or
an ancestral draw with ``stochastic``) and re-impose the source. The final target vectors are
rounded to their nearest token embeddings; the session commits them up to the first
end-of-sequence id.
"""

from __future__ import annotations

from genloom.toolkit import embedding_diffusion as ed


class DiffuSeqDecoder(ed.DiffusionSeq2SeqDecoder):
    name = "diffuseq"

    def sample(self, session, source):
        schedule = ed.schedule_of(session.model.ctx)
        times = ed.reverse_timesteps(self.config.steps, schedule.steps)
        ids, result = ed.embedding_reverse_process(session.model, source, times, schedule, stochastic=self.config.stochastic, clamp=self.config.clamp, generator=session.generator)
        session.metrics.count_forward("target", result.passes)
        return ids


def build(config, ctx):
    ed.target_length_of(ctx, "the diffuseq decoder")
    return DiffuSeqDecoder(config, ctx)
