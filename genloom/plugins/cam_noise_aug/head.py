"""The CAM head: continuous token embeddings, the noise-level conditioning and the diffusion head.

``vectors(ids)`` are the fixed continuous embeddings; ``inputs(x, sigma)`` lifts (noisy) inputs to
the backbone width and adds ``level_embedding(sigma)``, which is ``e(sigma) - e(0)`` so the clean
level adds exactly nothing; ``forward(h)`` is the identity (the backbone's output conditions the
diffusion head); ``diffusion_loss(h, target)`` and ``sample_next(h, steps)`` train and sample the
per-position denoiser (clean-embedding prediction, cosine schedule).
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Head
from genloom.toolkit.embedding_diffusion import GaussianSchedule, TimestepEmbedding, q_sample, reverse_timesteps, sample_loop


class CamHead(Head):
    def __init__(self, vocab_size: int, d_model: int, latent_dim: int, latent_seed: int, diffusion_steps: int, head_width: int):
        super().__init__()
        self.vocab_size, self.latent_dim = vocab_size, latent_dim
        generator = torch.Generator().manual_seed(latent_seed)
        self.register_buffer("latents", torch.randn(vocab_size, latent_dim, generator=generator))
        self.in_proj = nn.Linear(latent_dim, d_model)
        self.level = TimestepEmbedding(d_model, 1000.0)
        self.schedule = GaussianSchedule(diffusion_steps, "cosine")
        self.time = TimestepEmbedding(head_width, 1000.0 / diffusion_steps)
        self.condition = nn.Linear(d_model, head_width)
        self.denoiser = nn.Sequential(nn.Linear(latent_dim + head_width, head_width), nn.SiLU(), nn.Linear(head_width, head_width), nn.SiLU(), nn.Linear(head_width, latent_dim))

    def vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return self.latents[ids]

    def level_embedding(self, sigma: torch.Tensor) -> torch.Tensor:
        """(…, d_model) embedding of the noise level, exactly zero at sigma = 0."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.latents.device)
        return self.level(sigma) - self.level(torch.zeros_like(sigma))

    def inputs(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Backbone inputs for (B, L, latent_dim) embeddings read at noise level ``sigma`` (broadcast to (B, L))."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[:2])
        return self.in_proj(x) + self.level_embedding(sigma).to(x.dtype)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.in_proj(self.vectors(ids))  # clean inputs: level 0 adds nothing

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def token_nll(self, outputs, targets):
        raise ConfigError("the cam head models continuous embeddings (a diffusion head): train it with the 'cam-noise-aug' objective", path="objective")

    def denoise(self, z_t: torch.Tensor, t, h: torch.Tensor) -> torch.Tensor:
        """The clean-embedding prediction for noisy ``z_t`` (..., latent_dim) at ``t`` given conditions ``h``."""
        t = torch.as_tensor(t, dtype=torch.float32, device=z_t.device).expand(z_t.shape[:-1])
        c = self.condition(h) + self.time(t).to(h.dtype)
        return self.denoiser(torch.cat([z_t, c], -1))

    def diffusion_loss(self, h: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the clean-embedding prediction at one uniform t per position."""
        t = torch.randint(1, self.schedule.steps + 1, target.shape[:-1], generator=generator).to(target.device)
        noise = torch.randn(target.shape, generator=generator, dtype=target.dtype).to(target.device)
        z_t = q_sample(target, t, self.schedule, noise)
        return ((self.denoise(z_t, t.float(), h) - target) ** 2).mean()

    def sample_next(self, h: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, latent_dim) samples of the next embedding given (B, d_model) conditions: ancestral steps."""
        z = torch.randn((h.shape[0], 1, self.latent_dim), generator=generator, device=generator.device if generator is not None else None, dtype=h.dtype).to(h.device)
        out = sample_loop(lambda x, t: self.denoise(x, t, h[:, None]), z, reverse_timesteps(steps, self.schedule.steps), self.schedule, stochastic=True, generator=generator)
        return out.x[:, 0]


def cam_head(model, who: str) -> CamHead:
    if not isinstance(model.head, CamHead):
        raise ConfigError(f"{who} generates continuous embeddings: it needs the 'cam' head, got {type(model.head).__name__}", path="head")
    return model.head


def build(config, ctx):
    return CamHead(ctx.vocab_size, ctx.d_model, config.latent_dim, config.latent_seed, config.diffusion_steps, config.head_width)
