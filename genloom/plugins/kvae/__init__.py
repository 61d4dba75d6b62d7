"""Koopman VAE (KVAE): generative modelling of time series with a linear latent prior (Naiman et al., 2024).

What the paper does: a sequential VAE whose *prior* dynamics are linear, as Koopman theory
suggests: a GRU-based prior produces latent sequences z_bar_1..T, and the Koopman matrix A is the
least-squares solution of ``Z_bar_{2:T} = Z_bar_{1:T-1} A`` over the batch; a predictive loss
``||Z_bar_{2:T} - Z_bar_{1:T-1} A||^2`` ties the prior to that linear map. The posterior q(z | x)
comes from an encoder over the observed series, a decoder maps latents back to values, and the
ELBO's KL term compares posterior and prior step by step. Because the prior is linear, spectral
tools apply: constraints on the eigenvalues of A (e.g. |lambda| <= 1 for a stable system) are
added as a penalty, and generation draws a first latent from the prior and propagates it with A.

What this implementation does:

- tokens: the toolkit's ``time-step`` tokenizer (one token per step) and the baseline ``forecast``
  head (``Linear(V, d_model)`` in, ``Linear(d_model, V)`` out: the Gaussian emission mean);
- backbone ``kvae``: the encoder (a bidirectional GRU over the embedded steps -> posterior mean
  and log-variance per step), the prior (a GRU cell run on its own samples -> prior mean and
  log-variance per step), the decoder (a GRU over latents -> hidden states); ``forward`` decodes
  the posterior mean;
- objective ``kvae``: reconstruction MSE + beta * KL(q || p) (analytic, per step) + ``alpha`` *
  the Koopman predictive loss + ``gamma`` * the spectral penalty
  ``sum_i relu(|lambda_i(A)| - max_modulus)^2`` (zero for a stable A); ``generate(model, n, length)``
  samples z_bar_1 from the prior, rolls it out with A and decodes.

What it simplifies: only regular sampling (the paper's irregular-data path through a neural CDE is
not built); A is computed with a tiny ridge term (normal equations) so it is differentiable; GRUs
of toy width; the windows of a statsmodels series are the training sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(
    title="Generative Modeling of Regular and Irregular Time Series Data via Koopman VAEs",
    year=2024,
    arxiv="2310.02619",
)

_P = "genloom.plugins.kvae"


@dataclass
class KvaeConfig:
    """Encoder, GRU prior and decoder of a Koopman VAE."""

    d_model: int = 32
    """Width of the embedded steps and of the decoder's hidden states; published as ``ctx.d_model``."""
    latent: int = 8
    """Latent size k (A is k x k)."""
    hidden: int = 32
    """GRU hidden width of the encoder and the prior."""

    def __post_init__(self):
        for name in ("d_model", "latent", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)


@dataclass
class KvaeObjectiveConfig:
    """The ELBO of the Koopman VAE plus its predictive and spectral terms."""

    beta: float = 0.1
    """Weight of the KL term."""
    alpha: float = 1.0
    """Weight of the Koopman predictive loss ||Z_bar_{t+1} - Z_bar_t A||^2."""
    gamma: float = 1.0
    """Weight of the spectral penalty on the eigenvalues of A."""
    max_modulus: float = 1.0
    """Eigenvalue moduli above this are penalised (1: a stable linear system)."""
    ridge: float = 1e-6
    """Ridge term of the least-squares solve for A (keeps it defined and differentiable)."""

    def __post_init__(self):
        for name in ("beta", "alpha", "gamma", "ridge"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_modulus <= 0:
            raise ValueError(f"max_modulus must be > 0, got {self.max_modulus}")


@hookimpl
def genloom_backbones():
    return [records.backbone("kvae", f"{_P}.model:build", KvaeConfig,
                             "Koopman VAE: GRU posterior, GRU prior with a least-squares linear (Koopman) latent map, GRU decoder.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("kvae", f"{_P}.model:build_objective", KvaeObjectiveConfig,
                              "Koopman VAE ELBO + predictive loss of the Koopman matrix + spectral penalty.", PAPER)]
