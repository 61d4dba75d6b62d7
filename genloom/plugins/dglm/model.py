"""The DGLM backbone: the AR decoder, the sentence encoder, the soft-prompt map and the proposal denoiser.

``encode(ids, valid)`` is the semantic proposal ``z`` of a token span: the encoder backbone over its
own token embeddings with the ``full`` pattern, mean-pooled over valid positions, projected to
``latent_dim`` and scaled to norm ``sqrt(latent_dim)`` (unit variance per coordinate, the scale of
the diffusion noise). ``prefix_features`` is the same pooled encoding of the prefix, the
diffusion model's condition. ``soft_prompt(z)`` gives ``k`` vectors of the decoder's width;
``decoder_inputs`` puts them before the token embeddings. ``forward``/``init_state`` are the base
backbone's, so the soft prefix is ordinary input rows and the KV cache holds it like any token.
``denoise(z_t, t, c)`` predicts ``z_0``; ``diffusion_loss`` and ``sample_proposal`` train and run
it through ``genloom.toolkit.embedding_diffusion``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core import kernels
from genloom.core.errors import ConfigError
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, FULL, AttentionPattern
from genloom.toolkit.embedding_diffusion import GaussianSchedule, TimestepEmbedding, q_sample, reverse_timesteps, sample_loop


def base_spec(ctx, node, path: str):
    """The validated spec of a nested backbone node (None without a registry to validate against)."""
    from genloom.core.config import validate_node
    from genloom.core.plugins import get_registry

    node = {"name": node} if isinstance(node, str) else dict(node)
    return validate_node(ctx.registry or get_registry(), "backbone", node, path)


class SentenceEncoder(nn.Module):
    """Token ids -> pooled features (mean over valid positions) -> ``z`` on the sphere of radius sqrt(D)."""

    def __init__(self, vocab_size: int, backbone: Backbone, width: int, latent_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, width)
        self.backbone = backbone
        self.to_latent = nn.Linear(width, latent_dim)
        self.latent_dim = latent_dim

    def features(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, width) mean of the encoder's outputs over the valid positions."""
        h = self.backbone(self.embedding(ids), pattern=FULL, valid=valid)
        if valid is None:
            return h.mean(1)
        w = valid.to(h.dtype)[..., None]
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        v = self.to_latent(self.features(ids, valid))
        return math.sqrt(self.latent_dim) * v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class ProposalDenoiser(nn.Module):
    """``z_0`` prediction from ``(z_t, t, prefix features)``: a residual MLP (pre-LayerNorm blocks)."""

    def __init__(self, latent_dim: int, condition_dim: int, width: int, layers: int, steps: int):
        super().__init__()
        self.inp = nn.Linear(latent_dim, width)
        self.time = TimestepEmbedding(width, 1000.0 / steps)
        self.condition = nn.Sequential(nn.LayerNorm(condition_dim), nn.Linear(condition_dim, width))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width)) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, latent_dim))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=z_t.device).expand(z_t.shape[:-1])
        h = self.inp(z_t) + self.time(t).to(z_t.dtype) + self.condition(condition)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class DglmBackbone(Backbone):
    def __init__(self, base: Backbone, encoder: SentenceEncoder, d_model: int, latent_dim: int, prompt_vectors: int,
                 diffusion_steps: int, denoiser_width: int, denoiser_layers: int, encoder_width: int):
        super().__init__()
        self.base, self.encoder = base, encoder
        self.d_model, self.latent_dim, self.prompt_vectors = d_model, latent_dim, prompt_vectors
        self.to_prompt = nn.Sequential(nn.Linear(latent_dim, 4 * d_model), nn.SiLU(), nn.Linear(4 * d_model, prompt_vectors * d_model))
        self.schedule = GaussianSchedule(diffusion_steps, "cosine")
        self.denoiser = ProposalDenoiser(latent_dim, encoder_width, denoiser_width, denoiser_layers, diffusion_steps)

    # -- the AR decoder --------------------------------------------------------------------------
    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state=None, valid=None) -> torch.Tensor:
        return self.base(h, pattern=pattern, state=state, valid=valid)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        return self.base.init_state(batch_size, capacity, device=device, dtype=dtype)

    def supports(self, pattern: AttentionPattern) -> bool:
        return self.base.supports(pattern)

    def soft_prompt(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, k, d_model) soft-prompt vectors."""
        return self.to_prompt(z).view(z.shape[0], self.prompt_vectors, self.d_model)

    def decoder_inputs(self, z: torch.Tensor, embedded: torch.Tensor, valid: torch.Tensor | None = None):
        """``[soft(z) | embedded]`` and its validity mask (the soft prompt always valid; None if ``valid`` is None)."""
        h = torch.cat([self.soft_prompt(z).to(embedded.dtype), embedded], 1)
        if valid is None:
            return h, None
        return h, torch.cat([torch.ones(valid.shape[0], self.prompt_vectors, dtype=torch.bool, device=valid.device), valid], 1)

    # -- the proposal ----------------------------------------------------------------------------
    def encode(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The semantic proposal ``z`` (B, latent_dim) of token spans."""
        return self.encoder(ids, valid)

    def prefix_features(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The diffusion model's condition: the encoder's pooled features of the prefix (no gradient)."""
        with torch.no_grad():
            return self.encoder.features(ids, valid)

    def denoise(self, z_t: torch.Tensor, t, condition: torch.Tensor) -> torch.Tensor:
        return self.denoiser(z_t, t, condition)

    def diffusion_loss(self, z: torch.Tensor, condition: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the ``z_0`` prediction from ``z_t`` at one uniform ``t`` in [1, T] per row."""
        t = torch.randint(1, self.schedule.steps + 1, z.shape[:1], generator=generator).to(z.device)
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        z_t = q_sample(z, t, self.schedule, noise)
        return ((self.denoise(z_t, t.to(z.dtype), condition) - z) ** 2).sum(-1).mean() / self.latent_dim

    def sample_proposal(self, condition: torch.Tensor, steps: int, *, stochastic: bool = True, generator: torch.Generator | None = None, guide=None):
        """(B, latent_dim) proposals for (B, width) prefix features: ``steps`` reverse steps from pure
        noise. ``guide(z0_hat)`` optionally moves each clean prediction (classifier guidance).
        Returns :class:`~genloom.toolkit.embedding_diffusion.SampleResult`."""
        shape = (condition.shape[0], self.latent_dim)
        z_T = torch.randn(shape, generator=generator, device=generator.device if generator is not None else None, dtype=condition.dtype).to(condition.device)
        times = reverse_timesteps(steps, self.schedule.steps)
        return sample_loop(lambda z, t: self.denoise(z, t, condition), z_T, times, self.schedule, stochastic=stochastic, clamp=guide, generator=generator)


def dglm_backbone(model, who: str) -> DglmBackbone:
    if not isinstance(model.backbone, DglmBackbone):
        raise ConfigError(f"{who} needs the 'dglm' backbone (soft prompt, sentence encoder, proposal denoiser), got {type(model.backbone).__name__}", path="backbone")
    return model.backbone


def run_decoder(model, h: torch.Tensor, valid=None, state=None) -> torch.Tensor:
    """The AR decoder's logits for input rows ``h`` (kernels as the model's config names them)."""
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        return model.head(model.backbone(h, pattern=CAUSAL, state=state, valid=valid))


def build(config, ctx):
    base = ctx.build("backbone", config.base, path="backbone.base")
    spec = base_spec(ctx, config.encoder, "backbone.encoder")
    width = getattr(spec.config, "d_model", None)
    if width is None:
        raise ConfigError(f"the sentence encoder '{spec.record.name}' has no d_model field: use a backbone with a width (e.g. transformer)", path="backbone.encoder.name")
    encoder_backbone = spec.record.load_factory()(spec.config, ctx)  # built without bind: its width is not the decoder's d_model
    if not encoder_backbone.supports(FULL):
        raise ConfigError(f"the sentence encoder '{spec.record.name}' must serve the full (bidirectional) pattern", path="backbone.encoder.name")
    encoder = SentenceEncoder(ctx.vocab_size, encoder_backbone, width, config.latent_dim)
    return DglmBackbone(base, encoder, ctx.d_model, config.latent_dim, config.prompt_vectors, config.diffusion_steps,
                        config.denoiser_width, config.denoiser_layers, width)
