"""Parallelizing Autoregressive Generation with Variational State Space Models (Lambrechts et al., 2024).

What the paper does. A variational SSM (VSSM) is a VAE whose encoder and decoder are SSMs. The
encoder gives a posterior over one latent per time step, ``q(z_t | x_{<=t})``; the decoder SSM
reads only the latents, ``p(x_t | z_{<=t})``, never its own sampled outputs. Training maximises
the ELBO (reconstruction minus KL to the prior) in parallel; generation samples all latents from
the prior at once and decodes them in *one parallel pass* of the SSM, because no sampled token is
fed back. The decoder's recurrence lets generation resume from its saved state without
reprocessing the sequence; the autoregressive VSSM conditions on a prompt by encoding it (its
latents from the posterior) and still generates the continuation in parallel.

What this implementation does. The objective ``vssm`` (:mod:`.objective`) owns the encoder (token
embeddings through a diagonal SSM, :class:`genloom.toolkit.ssm.DiagonalSSM`, then mean and
log-variance of a ``latent_dim`` Gaussian per step) and the projection of latents into the
decoder's width; the decoder SSM is the model's backbone (any causal backbone with a state: the
config uses ``gss``) and the head its output distribution. Loss: the per-token negative ELBO,
``-log p(x_t | z_{<=t}) + beta KL(q(z_t|x_{<=t}) || N(0, I))`` with the reparameterisation trick.
The decoder ``vssm`` (:mod:`.decoder`) encodes the prompt (posterior means), advances the backbone
state over it, then proposes ``block`` tokens per round from prior latents in one backbone pass
with the state, and commits them all.

What it simplifies. A standard-normal prior per step (the paper's autoregressive prior variant
is replaced by prompt encoding through the posterior); the encoder is causal (the paper's
encoder may see more); processors are not applied to the parallel block (each position is sampled
from the head's distribution); byte-level text instead of MNIST/CIFAR pixels; tiny widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Parallelizing Autoregressive Generation with Variational State Space Models", year=2024, arxiv="2407.08415")


@dataclass
class VSSMObjectiveConfig:
    """Negative ELBO of a VAE with an SSM encoder and the model's backbone as SSM decoder."""

    latent_dim: int = 16
    """Latent size per time step."""
    encoder_modes: int = 16
    """Complex modes per channel of the encoder's diagonal SSM."""
    beta: float = 1.0
    """Weight of the KL term (1: the ELBO)."""

    def __post_init__(self):
        for name in ("latent_dim", "encoder_modes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@dataclass
class VSSMDecoderConfig:
    """Parallel generation from prior latents through the decoder SSM's state."""

    block: int | None = None
    """Tokens generated per parallel pass (None: all remaining at once)."""
    seed: int | None = None
    """Seed of the latent samples (None: the session's generator)."""

    def __post_init__(self):
        if self.block is not None and self.block < 1:
            raise ValueError(f"block must be at least 1 (or null), got {self.block}")


@hookimpl
def genloom_objectives():
    return [records.objective("vssm", "genloom.plugins.vssm.objective:build", VSSMObjectiveConfig, "VSSM: negative ELBO with an SSM encoder over tokens and the backbone as SSM decoder over latents.", PAPER)]


@hookimpl
def genloom_decoders():
    return [records.decoder("vssm", "genloom.plugins.vssm.decoder:build", VSSMDecoderConfig, "VSSM: sample all latents from the prior and decode them in one parallel pass; resumable state.", PAPER)]
