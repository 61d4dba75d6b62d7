"""LS4's three SSM stacks, its ELBO and prior sampling.

Training (``LS4Objective.loss``): tokens (B, T, V) -> embedding h -> posterior stack ->
``q(z_t | x) = N(mu_q, e^logvar_q)``; ``z = mu_q + sigma_q eps``; prior stack over
``[0, z_1, ..., z_(T-1)]`` -> ``p(z_t | z_<t)``; decoder stack over z -> emission mean.
Generation (``LS4Objective.generate``): the prior stack as a recurrence, one latent per step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Backbone, Objective
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.ls4 import LS4Config, LS4ObjectiveConfig
from genloom.toolkit.ssm import DiagonalSSM


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) in closed form, summed over the latent: (B, T)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


class SSMBlock(nn.Module):
    """``h + Linear(GELU(SSM(LN h)))``: all steps by the convolution, or steps by the recurrence."""

    def __init__(self, width: int, modes: int, dt_min: float, dt_max: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ssm = DiagonalSSM(width, modes, dt_min, dt_max)
        self.mix = nn.Linear(width, width)

    def forward(self, h):
        return h + self.mix(F.gelu(self.ssm.convolve(self.norm(h))))

    def step(self, h, state):
        y, state, _ = self.ssm.recur(self.norm(h), state, None)
        return h + self.mix(F.gelu(y)), state


class SSMStack(nn.Module):
    def __init__(self, inputs: int, outputs: int, config: LS4Config):
        super().__init__()
        self.embed = nn.Linear(inputs, config.d_model)
        self.blocks = nn.ModuleList(SSMBlock(config.d_model, config.modes, config.dt_min, config.dt_max) for _ in range(config.n_layers))
        self.out = nn.Linear(config.d_model, outputs)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)

    def step(self, x, states):
        """x (B, 1, inputs), one state per block -> (output (B, 1, outputs), new states)."""
        h, new = self.embed(x), []
        for block, state in zip(self.blocks, states):
            h, state = block.step(h, state)
            new.append(state)
        return self.out(h), new

    def init_states(self, batch, device, dtype):
        return [block.ssm.init_state(batch, device, dtype) for block in self.blocks]


class LS4(Backbone):
    patterns = frozenset({"full"})

    def __init__(self, config: LS4Config):
        super().__init__()
        self.d_model, self.latent = config.d_model, config.latent
        self.posterior = SSMStack(config.d_model, 2 * config.latent, config)
        self.prior = SSMStack(config.latent, 2 * config.latent, config)
        self.decoder = SSMStack(config.latent, config.d_model, config)

    def encode(self, h):
        """Posterior mean and log-variance (B, T, k) of the embedded steps h (B, T, d)."""
        mu, logvar = self.posterior(h).chunk(2, -1)
        return mu, logvar.clamp(-8, 8)

    def prior_of(self, z, shift: bool = True):
        """Prior mean and log-variance of every step of z (B, T, k), all at once (convolution view)."""
        inputs = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], 1) if shift else z
        mu, logvar = self.prior(inputs).chunk(2, -1)
        return mu, logvar.clamp(-8, 8)

    def sample_prior(self, batch: int, length: int, generator: torch.Generator | None = None, noise=None):
        """Latents (B, T, k) drawn step by step from the prior run as a recurrence, with the prior means/log-variances."""
        weight = self.prior.embed.weight
        states = self.prior.init_states(batch, weight.device, weight.dtype)
        previous = torch.zeros(batch, 1, self.latent, dtype=weight.dtype, device=weight.device)
        samples, means, logvars = [], [], []
        for t in range(length):
            out, states = self.prior.step(previous, states)
            mu, logvar = out.chunk(2, -1)
            logvar = logvar.clamp(-8, 8)
            eps = noise[:, t:t + 1] if noise is not None else torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
            previous = mu + (0.5 * logvar).exp() * eps
            samples.append(previous)
            means.append(mu)
            logvars.append(logvar)
        return torch.cat(samples, 1), torch.cat(means, 1), torch.cat(logvars, 1)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("ls4 encodes the whole window at once; generation samples the prior (objective.generate)")
        return self.decode(self.encode(h)[0])

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("ls4 encodes the whole window at once; generation samples the prior (objective.generate)")


class LS4Objective(Objective):
    pattern = FULL

    def __init__(self, config: LS4ObjectiveConfig):
        super().__init__()
        self.config = config

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        tokens, _ = model.tokenizer.encode(batch["x"])
        h = model.head.embed(tokens)
        backbone = model.backbone
        mu_q, logvar_q = backbone.encode(h)
        z = mu_q + (0.5 * logvar_q).exp() * torch.randn_like(mu_q)
        mu_p, logvar_p = backbone.prior_of(z)
        mean = model.head(backbone.decode(z))
        reconstruction = 0.5 * ((mean - tokens.to(h.dtype)) ** 2).sum(-1).mean()
        kl = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).mean()
        return {"loss": reconstruction + self.config.beta * kl, "reconstruction": reconstruction.detach(), "kl": kl.detach(),
                "mse": ((mean - tokens.to(h.dtype)) ** 2).mean().detach()}

    @torch.no_grad()
    def generate(self, model, num_samples: int, length: int, generator: torch.Generator | None = None):
        """Sequences (n, length, V): latents sampled step by step from the prior, decoded to emission means."""
        z, _, _ = model.backbone.sample_prior(num_samples, length, generator)
        return model.head(model.backbone.decode(z))


def build(config: LS4Config, ctx) -> LS4:
    ctx.set("d_model", config.d_model)
    return LS4(config)


def build_objective(config: LS4ObjectiveConfig, ctx=None) -> LS4Objective:
    return LS4Objective(config)
