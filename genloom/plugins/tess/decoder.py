"""TESS decoding on the shared loop: the simplex reverse process over the target block.

One round: ``x_T = k eps`` on the target, the source's clean simplex (timestep 0) re-imposed after
every step. Each of ``steps`` timesteps (an even grid from T to 0) evaluates the network once on
``x_t`` and, with self-conditioning, the previous step's prediction (none at the first step); the
prediction is projected to the simplex vertex of its argmax and noised afresh to the next timestep
(``renoise_step``). The output is the argmax of the last prediction, committed up to the first
end-of-sequence id.
"""

from __future__ import annotations

import torch

from genloom.toolkit import embedding_diffusion as ed

from .objective import simplex_head, source_kept


def simplex_reverse_process(model, source, times, schedule, k: float, *, self_conditioning: bool = True, generator=None):
    """(B, T) target ids for (B, S) source blocks, and the SampleResult (``passes``)."""
    head = simplex_head(model, "the tess decoder")
    S, T = source.shape[1], int(model.ctx.get("target_length"))
    V = head.vocab_size
    dtype = head.embed_tokens.weight.dtype
    source_simplex = ed.simplex(source, V, k, dtype=dtype)
    noised = ed.target_positions(source.shape[0], S, T, source.device)
    x_T = k * torch.randn((source.shape[0], S + T, V), generator=generator, device=generator.device if generator is not None else None, dtype=dtype).to(source.device)
    state = {"previous": None}

    def denoise(x, t):
        previous = state["previous"] if self_conditioning else None
        logits = head.denoise(model, x, t, None if previous is None else source_kept(previous, x, noised))
        state["previous"] = logits
        return logits

    def reimpose(x):
        return torch.cat([source_simplex, x[:, S:]], 1)

    all_times = ed.with_clean_source(times[:, None, None].expand(-1, 1, T), S)
    result = ed.sample_loop(denoise, x_T, all_times, schedule, update="renoise", noise_scale=k, reimpose=reimpose,
                            clamp=lambda logits: ed.project_to_simplex(logits, k), generator=generator)
    return ed.simplex_tokens(result.x[:, S:]), result


class TessDecoder(ed.DiffusionSeq2SeqDecoder):
    name = "tess"

    def sample(self, session, source):
        ctx = session.model.ctx
        schedule = ed.schedule_of(ctx)
        times = ed.reverse_timesteps(self.config.steps, schedule.steps)
        ids, result = simplex_reverse_process(session.model, source, times, schedule, float(ctx.get("simplex_value", 5.0)),
                                              self_conditioning=self.config.self_conditioning, generator=session.generator)
        session.metrics.count_forward("target", result.passes)
        return ids


def build(config, ctx):
    ed.target_length_of(ctx, "the tess decoder")
    return TessDecoder(config, ctx)
