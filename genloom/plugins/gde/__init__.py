"""Generative Distribution Embeddings (NeurIPS 2025).

What the paper does. An autoencoder lifted to distributions: the encoder reads a *set* of samples
(an empirical distribution) and the decoder is a conditional generator that should reproduce the
distribution the set came from. The encoder must be distributionally invariant: invariant to the
order of the samples and (approximately) to which samples of the same distribution it is shown.
Training the pair end to end makes the latent a predictive sufficient statistic; on Gaussians and
Gaussian mixtures latent distances approximately recover the W2 distance and latent
interpolation approximately follows optimal-transport paths.

What this implementation does.

- data set ``gaussian-sets``: each sample is a random 1-D Gaussian (mean, std) and two
  independent sets of ``set_size`` draws from it (``set`` for the encoder, ``target`` for the
  generator), so the generator learns the distribution, not the shown samples.
- head ``gde-flow``: embeds a sample as MLP(x); holds the conditional generator, a flow-matching
  velocity field v(x_t, t, z) (an MLP), and samples by Euler integration of dx/dt = v from N(0, 1).
- backbone ``deepsets``: rho(mean_n phi(h_n)), the set embedding z, returned at every position
  (permutation-invariant by construction); its first ``latent`` coordinates are the embedding.
- objective ``gde``: z = encoder(set); conditional flow matching on the target draws with the
  straight path x_t = (1 - t) x_0 + t x_1, loss ||v(x_t, t, z) - (x_1 - x_0)||^2.
  ``evaluate_run`` reports the Spearman correlation of latent distances with exact W2 distances,
  the resampling gap (distance between embeddings of two sets from one distribution over the
  distance between distributions) and the generator's error in the encoded mean and std.

What it simplifies. 1-D Gaussians only (the paper also embeds mixtures, cells, sequences and
images); a DeepSets encoder (the paper also uses attention-based ones); a small MLP flow as the
generator; no prior weighting of the latent geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import AnyFloat, PositiveFloat, PositiveInt, Seed

PAPER = records.Paper(title="Generative Distribution Embeddings", year=2025, arxiv="2505.18150")

_P = "genloom.plugins.gde"


@dataclass
class GaussianSetsConfig:
    """Random 1-D Gaussians, each seen as two independent sets of draws."""

    set_size: PositiveInt = 64
    """Draws per set."""
    mean_low: AnyFloat = -2.0
    """Smallest mean."""
    mean_high: AnyFloat = 2.0
    """Largest mean."""
    std_low: PositiveFloat = 0.2
    """Smallest standard deviation."""
    std_high: PositiveFloat = 1.5
    """Largest standard deviation."""
    train_sets: PositiveInt = 200_000
    """Distributions in the training split (drawn lazily)."""
    eval_sets: PositiveInt = 256
    """Distributions in each of val and test."""
    seed: Seed = 0
    """Seed of the draws (disjoint streams per split)."""
    batch_size: PositiveInt = 64
    """Distributions per training batch."""
    eval_batch_size: PositiveInt | None = None
    """Distributions per evaluation batch (None: batch_size)."""

    def __post_init__(self):
        if not self.mean_low < self.mean_high:
            raise ValueError(f"mean_low ({self.mean_low}) must be below mean_high ({self.mean_high})")
        if not self.std_low < self.std_high:
            raise ValueError(f"std_low ({self.std_low}) must be below std_high ({self.std_high})")


@dataclass
class GdeFlowHeadConfig:
    """Sample embedding in; a conditional flow-matching generator of samples given the set embedding."""

    hidden: PositiveInt = 64
    """Width of the velocity MLP."""
    latent: PositiveInt | None = None
    """Embedding dimension the generator is conditioned on (None: the backbone's)."""
    d_model: PositiveInt | None = None
    """Hidden width (None: the backbone's)."""
    sample_steps: PositiveInt = 32
    """Euler steps of the generator's ODE."""

    def bind(self, ctx) -> None:
        if self.latent is None:
            self.latent = ctx.latent
        if self.d_model is None:
            self.d_model = ctx.d_model


@dataclass
class DeepSetsConfig:
    """rho(mean phi): a permutation-invariant set embedding, broadcast to every position."""

    d_model: PositiveInt = 64
    """Width of phi and rho; published as ``ctx.d_model``."""
    latent: PositiveInt = 8
    """Embedding dimension (the first coordinates of the output); published as ``ctx.latent``."""
    layers: PositiveInt = 2
    """Linear layers of phi and of rho."""

    def __post_init__(self):
        if self.latent > self.d_model:
            raise ValueError(f"latent ({self.latent}) must be at most d_model ({self.d_model})")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)
        ctx.set("latent", self.latent)


@dataclass
class GdeObjectiveConfig:
    """Conditional flow matching of a distribution's draws given the embedding of other draws of it."""

    eval_samples: PositiveInt = 512
    """Generated samples per distribution in ``evaluate_run``."""


@hookimpl
def genloom_datasets():
    return [records.dataset("gaussian-sets", f"{_P}.model:build_data", GaussianSetsConfig,
                            "Random 1-D Gaussians, each as two independent sets of draws (exact W2 between them known).", PAPER)]


@hookimpl
def genloom_heads():
    return [records.head("gde-flow", f"{_P}.model:build_head", GdeFlowHeadConfig,
                         "Sample embedding; a flow-matching generator conditioned on the set embedding.", PAPER)]


@hookimpl
def genloom_backbones():
    return [records.backbone("deepsets", f"{_P}.model:build_backbone", DeepSetsConfig,
                             "DeepSets rho(mean phi): a permutation-invariant set embedding at every position.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("gde", f"{_P}.model:build_objective", GdeObjectiveConfig,
                              "Generative distribution embedding: encode a set, flow-match other draws of its distribution.", PAPER)]
