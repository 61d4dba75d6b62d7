"""Torch-free config dataclasses of continuous-embedding diffusion (``genloom.toolkit.embedding_diffusion``).

Plugin records name these, so ``genloom plugins`` and ``genloom components`` import them without
torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from genloom.core.constraints import Interval, PositiveInt


@dataclass
class GaussianDiffusionConfig:
    """The forward process of a continuous diffusion: T steps and the noise schedule alpha_bar(t)."""

    steps: Annotated[int, Interval(ge=2)] = 1000
    """T, the steps of the forward process (t = 0 is clean data, t = T is almost pure noise); decoders
    may walk the reverse process in fewer, skipping steps."""
    schedule: Literal["sqrt", "cosine", "linear"] = "sqrt"
    """alpha_bar(u), u = t/T: 'sqrt' 1 - sqrt(u) (Diffusion-LM / DiffuSeq: noise rises fast at first),
    'cosine' cos^2(pi/2 (u + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)) (TESS), 'linear' 1 - u."""

    def bind(self, ctx):
        # the denoiser's timestep embedding and the decoders read the forward process from here
        ctx.set("diffusion_steps", self.steps)
        ctx.set("diffusion_schedule", self.schedule)


@dataclass
class EmbeddingDiffusionDecoderConfig:
    """Reverse-process sampling over a fixed target block: walk the timesteps down, round at the end."""

    steps: PositiveInt = 20
    """Reverse steps (network evaluations); the T training steps are visited on an even grid."""
    stochastic: bool = False
    """False: deterministic DDIM updates (eta = 0); True: ancestral draws from q(x_s | x_t, x0_hat)."""
    clamp: bool = True
    """The clamping trick (Diffusion-LM): replace each predicted x0 by its nearest token embedding
    (or simplex vertex) before the update."""
