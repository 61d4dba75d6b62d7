"""CALM's head: K tokens in (input compression), one latent vector out (energy-based generator).

- ``embed(ids)``: (B, n*K) ids -> (B, n, d_model). Each chunk's K token embeddings are
  concatenated and compressed by a two-layer MLP into one backbone input (the paper feeds the
  previous chunk's *tokens*, not its vector, to the transformer).
- ``forward(h)`` returns h itself: the head's "distribution parameters" are the hidden state
  that conditions the generator.
- ``generate(h, noise)``: the energy generator. epsilon ~ U[-1/2, 1/2]^noise_dim is projected,
  then each residual MLP block fuses the running representation with h:
  x <- x + W2 silu(W1 LN(x) + Wc h); a final LN + linear gives z (dimension l).
- ``sample(h, generator)``: one z per row of h.
- ``energy_loss(h, target_mean, target_logvar)``: the unbiased energy-score loss with N model
  samples and M posterior samples of the target,
  2/(NM) sum_ij ||x_i - y_j||^a - 1/(N(N-1)) sum_{i != j} ||x_i - x_j||^a, whose expectation
  is 2 E||X - Y||^a - E||X - X'||^a = -2 S(P, Q) + const (minimised exactly at P = Q).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.errors import ConfigError
from genloom.core.model import Head


class GeneratorBlock(nn.Module):
    """x + W2 silu(W1 LN(x) + Wc h): one residual MLP block conditioned on the hidden state."""

    def __init__(self, width: int, cond: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, 2 * width)
        self.cond = nn.Linear(cond, 2 * width)
        self.out = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return x + self.out(F.silu(self.inner(self.norm(x)) + self.cond(h)))


def energy_distance_terms(samples: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two U-statistics of the energy score, per position.

    ``samples`` (N, ..., l) from the model, ``targets`` (M, ..., l) from the target law. Returns
    (fidelity, diversity): mean_ij ||x_i - y_j||^alpha and mean_{i != j} ||x_i - x_j||^alpha, each
    shaped like the middle dimensions. The N x M cross distances come from one batched matrix
    product (|x|^2 + |y|^2 - 2 x.y), the small N x N term from exact differences; a tiny floor
    under the square root keeps gradients finite.
    """
    N = samples.shape[0]
    a = samples.movedim(0, -2).reshape(-1, N, samples.shape[-1])  # (P, N, l)
    b = targets.movedim(0, -2).reshape(-1, targets.shape[0], targets.shape[-1])  # (P, M, l)
    cross = (a.pow(2).sum(-1)[:, :, None] + b.pow(2).sum(-1)[:, None, :] - 2.0 * a @ b.transpose(1, 2)).clamp_min(0.0)
    fidelity = (cross + 1e-12).pow(alpha / 2).mean((1, 2)).reshape(samples.shape[1:-1])
    diff = a[:, :, None] - a[:, None, :]  # exact differences for the small N x N term
    pair = (diff.pow(2).sum(-1) + 1e-12).pow(alpha / 2)
    off = ~torch.eye(N, dtype=torch.bool, device=samples.device)
    diversity = pair[:, off].mean(-1).reshape(samples.shape[1:-1])
    return fidelity, diversity


class EnergyHead(Head):
    def __init__(self, config, *, vocab_size: int, d_model: int, chunk_size: int, latent_dim: int):
        super().__init__()
        self.config = config
        self.chunk_size, self.latent_dim, self.d_model = chunk_size, latent_dim, d_model
        width = config.hidden or d_model
        self.noise_dim = config.noise_dim or width
        # input compression: K token embeddings -> one backbone input
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.token_embedding.weight, std=d_model**-0.5)
        self.compress = nn.Sequential(nn.Linear(chunk_size * d_model, 2 * d_model), nn.SiLU(), nn.Linear(2 * d_model, d_model))
        # energy generator
        self.noise_in = nn.Linear(self.noise_dim, width)
        self.cond_norm = nn.LayerNorm(d_model)
        self.blocks = nn.ModuleList(GeneratorBlock(width, d_model) for _ in range(config.n_blocks))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, latent_dim)

    # -- tokens in ---------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        K = self.chunk_size
        if ids.shape[-1] % K:
            raise ValueError(f"the calm-energy head reads whole chunks: {ids.shape[-1]} ids are not a multiple of chunk_size={K}")
        x = self.token_embedding(ids).unflatten(-2, (ids.shape[-1] // K, K)).flatten(-2)
        return self.compress(x)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h

    # -- a vector out ------------------------------------------------------------------------
    def noise(self, shape, generator: torch.Generator | None = None, like: torch.Tensor | None = None) -> torch.Tensor:
        """epsilon ~ U[-1/2, 1/2]^noise_dim for every row of ``shape``."""
        device = like.device if like is not None else None
        dtype = like.dtype if like is not None else None
        return torch.rand(*shape, self.noise_dim, generator=generator, device=device, dtype=dtype) - 0.5

    def generate(self, h: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z = g(h, epsilon): (..., d_model) hidden states and (..., noise_dim) noise -> (..., l)."""
        c = self.cond_norm(h)
        x = self.noise_in(noise)
        for block in self.blocks:
            x = block(x, c)
        return self.out(self.out_norm(x))

    def sample(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One latent vector per row of ``h`` (..., d_model) -> (..., l)."""
        return self.generate(h, self.noise(h.shape[:-1], generator, like=h))

    def energy_loss(self, h: torch.Tensor, target_mean: torch.Tensor, target_logvar: torch.Tensor, mask: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The energy loss at every position of ``h`` (B, n, D) against the posterior N(mean, exp(logvar))
        (B, n, l) of the target chunks; ``mask`` (B, n) selects the scored positions."""
        N, M = self.config.model_samples, self.config.target_samples
        hs = h.unsqueeze(0).expand(N, *h.shape)
        samples = self.generate(hs, self.noise(hs.shape[:-1], generator, like=h))
        std = torch.exp(0.5 * target_logvar)
        eps = torch.randn((M, *target_mean.shape), generator=generator, device=h.device, dtype=target_mean.dtype)
        targets = target_mean + std * eps
        fidelity, diversity = energy_distance_terms(samples, targets, self.config.alpha)
        per = 2.0 * fidelity - diversity
        if mask is None:
            mask = torch.ones_like(per, dtype=torch.bool)
        w = mask.to(per.dtype)
        count = w.sum().clamp_min(1.0)
        return {"loss": (per * w).sum() / count, "fidelity": (fidelity * w).sum() / count, "diversity": (diversity * w).sum() / count}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, weight=None) -> torch.Tensor:
        """Energy loss of hidden states ``outputs`` against target vectors ``targets`` (taken as
        exact: a posterior of zero variance)."""
        return self.energy_loss(outputs, targets, torch.full_like(targets, -60.0), mask)["loss"]

    def token_nll(self, outputs, targets):
        raise NotImplementedError("the calm-energy head has no likelihood (it is an implicit generator): evaluate it with BrierLM")


def build_head(config, ctx) -> EnergyHead:
    tokenizer = ctx.get("tokenizer")
    if tokenizer is None or not hasattr(tokenizer, "decode_vectors"):
        raise ConfigError("the calm-energy head needs the calm-chunks tokenizer (its chunk autoencoder gives the target vectors)", path="tokenizer")
    return EnergyHead(config, vocab_size=ctx.vocab_size, d_model=ctx.d_model, chunk_size=ctx.chunk_size, latent_dim=ctx.latent_dim)
