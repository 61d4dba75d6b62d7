"""CAM decoding on the shared loop: sample a continuous embedding, commit its nearest token, feed
the embedding back with a small injected noise.

``start`` runs the prompt's clean embeddings through the backbone with a fresh state and keeps the
last output; ``propose`` samples the next embedding with the diffusion head (``diffusion_steps``
ancestral steps, counted as ``diffusion-head`` passes) and returns its nearest token;
``verify`` commits it; ``advance`` feeds back ``sample + inference_noise * eps`` read at level
``inference_noise`` (one ``target`` pass).
"""

from __future__ import annotations

import torch

from genloom.core import kernels
from genloom.core.generation import Commit, Decoder, initial_capacity
from genloom.core.pattern import CAUSAL
from genloom.toolkit.embedding_diffusion import round_to_tokens

from .head import cam_head


class CamDecoder(Decoder):
    def _backbone(self, session, inputs, valid=None):
        session.metrics.count_forward("target")
        with kernels.scope(getattr(session.model.ctx, "kernels", None)):
            return session.model.backbone(inputs, pattern=CAUSAL, state=session.state, valid=valid)

    def start(self, session) -> None:
        head = cam_head(session.model, "the cam decoder")
        session.state = session.model.init_state(session.batch_size, initial_capacity(session))
        h = self._backbone(session, head.embed(session.prompt_ids), valid=session.prompt_valid)
        session.scratch["h"] = h[:, -1]

    def propose(self, session):
        head = session.model.head
        sample = head.sample_next(session.scratch["h"], self.config.diffusion_steps, session.generator)
        session.metrics.count_forward("diffusion-head", self.config.diffusion_steps)
        session.scratch["sample"] = sample
        return round_to_tokens(sample, head.latents)

    def verify(self, session, proposal) -> Commit:
        return Commit.all(proposal)

    def advance(self, session, commit) -> None:
        head = session.model.head
        sample, level = session.scratch["sample"], self.config.inference_noise
        noise = torch.randn(sample.shape, generator=session.generator, device=session.generator.device if session.generator is not None else None, dtype=sample.dtype).to(sample.device)
        fed = sample + level * noise
        session.scratch["fed"] = fed
        h = self._backbone(session, head.inputs(fed[:, None], level))
        session.scratch["h"] = h[:, -1]


def build(config, ctx):
    return CamDecoder(config, ctx)
