"""DiffuSeq decoding on the shared loop: the reverse process over the target block.

One round: draw ``z_T`` for the target block, set the source block to its (clean) embeddings, then
for each of ``steps`` timesteps predict ``z_0``, clamp it to the nearest token embeddings (the
clamping trick, optional), move to the next timestep (DDIM, or an ancestral draw) and re-impose the
source. The final vectors of the target block are rounded to their nearest token embeddings; the
session commits them up to the first end-of-sequence id.
"""

from __future__ import annotations

import torch

from genloom.toolkit.embedding_diffusion import DiffusionSeq2SeqDecoder, clamp_to_embeddings, reverse_timesteps, round_to_tokens, sample_loop, schedule_of, target_length_of


def reverse_process(model, source, times, schedule, *, stochastic, clamp, generator=None):
    """(B, T) target ids for (B, S) source blocks, walking ``times`` ((K + 1,) or (K + 1, 1, S + T)).

    Returns the ids and the :class:`~genloom.toolkit.embedding_diffusion.SampleResult`.
    """
    head = model.head
    S = source.shape[1]
    T = int(model.ctx.get("target_length"))
    source_vectors = head.vectors(source)
    z = torch.randn((source.shape[0], S + T, head.embed_dim), generator=generator, dtype=source_vectors.dtype).to(source.device)
    is_source = torch.zeros(S + T, dtype=torch.bool, device=source.device)
    is_source[:S] = True

    def reimpose(x):
        return torch.cat([source_vectors, x[:, S:]], 1)

    result = sample_loop(lambda x, t: head.denoise(model, x, t), z, times, schedule, stochastic=stochastic,
                         clamp=(lambda x: clamp_to_embeddings(x, head.weight)) if clamp else None, reimpose=reimpose, generator=generator)
    return round_to_tokens(result.x[:, S:], head.weight), result


class DiffuSeqDecoder(DiffusionSeq2SeqDecoder):
    name = "diffuseq"

    def sample(self, session, source):
        from .objective import diffusion_head

        diffusion_head(session.model, "the diffuseq decoder")
        schedule = schedule_of(session.model.ctx)
        times = reverse_timesteps(self.config.steps, schedule.steps)
        ids, result = reverse_process(session.model, source, times, schedule, stochastic=self.config.stochastic, clamp=self.config.clamp, generator=session.generator)
        session.metrics.count_forward("target", result.passes)
        return ids


def build(config, ctx):
    target_length_of(ctx, "the diffuseq decoder")
    return DiffuSeqDecoder(config, ctx)
