"""The VSSM objective: an SSM encoder q(z_t | x_{<=t}) and the negative ELBO through the decoder.

    e        = head.embed(x)                        (B, L, D)
    mu, logv = W_q DiagonalSSM(e)                   (B, L, latent_dim) each, causal
    z        = mu + exp(logv / 2) * eps
    logits   = head(backbone(W_z z))               p(x_t | z_{<=t}): the decoder never sees x
    loss     = mean_t [ CE(logits_t, x_t) + beta * KL(N(mu_t, exp logv_t) || N(0, I)) ]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL
from genloom.toolkit.ssm import DiagonalSSM


class VSSMObjective(Objective):
    pattern = CAUSAL

    def __init__(self, cfg, d_model: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = DiagonalSSM(d_model, cfg.encoder_modes, 0.001, 0.1)
        self.to_posterior = nn.Linear(d_model, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, d_model)

    def posterior(self, model, ids: torch.Tensor, valid: torch.Tensor | None = None):
        """Mean and log-variance (B, L, latent_dim) of q(z_t | x_{<=t}); padded steps embed zeros."""
        e = model.head.embed(ids)
        if valid is not None:
            e = e * valid[..., None].to(e.dtype)
        mu, log_var = self.to_posterior(F.gelu(self.encoder.convolve(e))).chunk(2, -1)
        return mu, log_var.clamp(-10, 10)

    def decode(self, model, z: torch.Tensor, state=None, valid=None) -> torch.Tensor:
        """Logits of p(x_t | z_{<=t}) (B, L, V): the backbone over projected latents."""
        return model.head(model.backbone(self.from_latent(z), pattern=CAUSAL, state=state, valid=valid))

    def loss(self, model, batch):
        ids = batch["ids"]
        mu, log_var = self.posterior(model, ids)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        logits = self.decode(model, z)
        recon = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), reduction="none")
        kl = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).sum(-1).flatten().float()
        nats = (recon + self.cfg.beta * kl).sum()
        count = torch.tensor(float(ids.numel()), device=ids.device)
        loss = nats / count
        out = {"loss": loss, "recon": recon.mean().detach(), "kl": kl.mean().detach(), "bits_per_token": loss.detach() / math.log(2), "_nats": nats.detach(), "_tokens": count}
        if "target_bytes" in batch:
            nbytes = batch["target_bytes"].sum().clamp_min(1.0)
            out["bits_per_byte"] = nats.detach() / math.log(2) / nbytes
            out["_bytes"] = nbytes.detach()
        return out


def build(config, ctx) -> VSSMObjective:
    return VSSMObjective(config, ctx.d_model)
