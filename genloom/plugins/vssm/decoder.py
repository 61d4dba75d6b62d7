"""The VSSM decoder on the core's loop: prompt through the posterior, then parallel blocks.

1. start: encode the prompt (posterior means), advance the backbone's state over their projected
   latents (left padding is masked);
2. propose: sample ``block`` latents per sequence from the prior N(0, I), run the backbone once
   over all of them *with the state* (the state advances), sample every position's token from its
   logits: no sampled token is fed back, so the block is one parallel pass;
3. verify: commit the whole block; advance: nothing left to do (the state already moved).
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder


class VSSMDecoder(Decoder):
    def objective(self, session):
        objective = session.model.objective
        if not hasattr(objective, "decode"):
            raise ValueError("the vssm decoder needs a model trained with the vssm objective (it owns the encoder and the latent projection)")
        return objective

    def start(self, session) -> None:
        objective = self.objective(session)
        session.state = session.model.init_state(session.batch_size, session.prompt_ids.shape[1] + session.max_new_tokens + 16)
        if self.config is not None and self.config.seed is not None:
            session.scratch["latent_generator"] = torch.Generator(device=session.device).manual_seed(self.config.seed)
        mu, _ = objective.posterior(session.model, session.prompt_ids, session.prompt_valid)
        objective.decode(session.model, mu, state=session.state, valid=session.prompt_valid)
        session.metrics.count_forward("target")

    def propose(self, session):
        objective = self.objective(session)
        left = session.max_new_tokens - min(len(g) for g in session.generated)
        block = min(left, self.config.block or left) if self.config is not None else left
        generator = session.scratch.get("latent_generator", session.generator)
        z = torch.randn(session.batch_size, block, objective.cfg.latent_dim, generator=generator, device=session.device)
        z = z.to(next(objective.parameters()).dtype)
        logits = objective.decode(session.model, z, state=session.state)
        session.metrics.count_forward("target")
        return session.model.head.sample(logits.reshape(-1, logits.shape[-1]), session.generator).view(session.batch_size, block)

    def verify(self, session, proposal) -> Commit:
        return Commit.all(proposal)

    def advance(self, session, commit) -> None:
        pass


def build(config, ctx) -> VSSMDecoder:
    return VSSMDecoder(config, ctx)
