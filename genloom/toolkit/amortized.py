"""Amortised and in-context inference: synthetic task priors with exact posteriors, set encoders,
the context/query attention pattern and the bar (Riemann) distribution.

Techniques that learn to do Bayesian inference in one forward pass (prior-data fitted networks,
neural processes, distribution transformers, distribution embeddings) share four things:

- **Task priors with a reference answer.** :class:`GPPrior` draws regression tasks from a Gaussian
  process and gives the exact posterior predictive (:meth:`GPPrior.posterior`);
  :class:`GaussianMeanPrior` draws Gaussian-mean estimation tasks under a Gaussian-mixture prior,
  whose posterior is again a Gaussian mixture in closed form (:func:`gmm_mean_posterior`);
  :func:`gaussian_sets` draws samples of random 1-D Gaussians, with :func:`w2_gaussian` the exact
  2-Wasserstein distance between two of them. A learned model is scored against these answers,
  never against a load-dependent figure.
- **Permutation-invariant set encoders.** :class:`DeepSetEncoder` (``rho(pool_i phi(s_i))``) and
  :class:`AttentionPool` (learned seeds attend to the set, Set Transformer's PMA).
- **The context/query pattern.** :class:`ContextQueryPattern`: the first ``n_context`` positions
  attend to each other; every later (query) position attends to the context and to itself only,
  so a query's output is unaffected by the other queries and (with a position-free model) every
  output is invariant to permuting the context.
- **The bar distribution.** :class:`BarDistribution`: a categorical over ``n`` bars of fixed
  borders with a uniform density inside each bar (PFN's Riemann distribution); its density
  integrates to 1 by construction.

Plus :class:`PointSetTokenizer` (real-valued sets pass through) and the ``gp-prior`` data set
(:func:`build_gp_prior`), which the baseline plugin registers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from genloom.core import kernels
from genloom.core.data import DataSource
from genloom.core.pattern import FULL, AttentionPattern
from genloom.toolkit.amortized_config import GpPriorConfig, PointSetTokenizerConfig

# ---------------------------------------------------------------------------------------------
# Task priors
# ---------------------------------------------------------------------------------------------


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, lengthscale: float, outputscale: float = 1.0) -> torch.Tensor:
    """``outputscale * exp(-|a_i - b_j|^2 / (2 lengthscale^2))`` for a (..., N, D) and b (..., M, D): (..., N, M)."""
    d2 = ((a[..., :, None, :] - b[..., None, :, :]) ** 2).sum(-1)
    return outputscale * torch.exp(-0.5 * d2 / lengthscale**2)


@dataclass
class GPPrior:
    """Regression tasks from a zero-mean GP with an RBF kernel and Gaussian observation noise (std ``noise``)."""

    lengthscale: float = 0.3
    outputscale: float = 1.0
    noise: float = 0.1
    x_dim: int = 1
    x_low: float = -1.0
    x_high: float = 1.0

    def sample(self, batch: int, n_points: int, generator: torch.Generator | None = None, dtype=torch.float64):
        """``(x (B, N, D), y (B, N), f (B, N))``: inputs, noisy labels and the noise-free function values."""
        x = self.x_low + (self.x_high - self.x_low) * torch.rand(batch, n_points, self.x_dim, generator=generator, dtype=torch.float64)
        cov = rbf_kernel(x, x, self.lengthscale, self.outputscale) + 1e-8 * torch.eye(n_points, dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)
        f = (chol @ torch.randn(batch, n_points, 1, generator=generator, dtype=torch.float64))[..., 0]
        y = f + self.noise * torch.randn(batch, n_points, generator=generator, dtype=torch.float64)
        return x.to(dtype), y.to(dtype), f.to(dtype)

    def posterior(self, x_context: torch.Tensor, y_context: torch.Tensor, x_query: torch.Tensor):
        """The exact posterior predictive of the labels at ``x_query``: ``(mean (B, M), variance (B, M))``, in float64.

        mean = K_qc (K_cc + s^2 I)^-1 y_c, variance = k(x, x) + s^2 - K_qc (K_cc + s^2 I)^-1 K_cq.
        With an empty context it is the prior (mean 0, variance outputscale + s^2).
        """
        xc, yc, xq = x_context.double(), y_context.double(), x_query.double()
        prior_var = torch.full(xq.shape[:-1], self.outputscale + self.noise**2, dtype=torch.float64, device=xq.device)
        if xc.shape[-2] == 0:
            return torch.zeros_like(prior_var), prior_var
        k_cc = rbf_kernel(xc, xc, self.lengthscale, self.outputscale) + self.noise**2 * torch.eye(xc.shape[-2], dtype=torch.float64, device=xc.device)
        k_qc = rbf_kernel(xq, xc, self.lengthscale, self.outputscale)
        chol = torch.linalg.cholesky(k_cc)
        alpha = torch.cholesky_solve(yc[..., None], chol)[..., 0]
        mean = (k_qc @ alpha[..., None])[..., 0]
        v = torch.linalg.solve_triangular(chol, k_qc.transpose(-1, -2), upper=False)
        return mean, prior_var - (v**2).sum(-2)


@dataclass
class GaussianMeanPrior:
    """Gaussian-mean tasks: theta ~ a K-component Gaussian mixture in R^d, data y_n ~ N(theta, noise_var I).

    With ``random_prior`` each task draws its own mixture (weights from a Dirichlet(1), means from
    N(0, mean_scale^2 I), isotropic variances in [var_low, var_high]), so a model must read the
    prior it is given (a distribution transformer's on-the-fly prior adaptation).
    """

    dim: int = 1
    components: int = 2
    noise_var: float = 1.0
    mean_scale: float = 2.0
    var_low: float = 0.25
    var_high: float = 1.5

    def sample_prior(self, batch: int, generator=None, dtype=torch.float64):
        """``(weights (B, K), means (B, K, d), covs (B, K, d, d))`` of random mixture priors."""
        gamma = -torch.log(torch.rand(batch, self.components, generator=generator, dtype=torch.float64).clamp_min(1e-12))
        weights = gamma / gamma.sum(-1, keepdim=True)  # Dirichlet(1, ..., 1)
        means = self.mean_scale * torch.randn(batch, self.components, self.dim, generator=generator, dtype=torch.float64)
        var = self.var_low + (self.var_high - self.var_low) * torch.rand(batch, self.components, generator=generator, dtype=torch.float64)
        covs = var[..., None, None] * torch.eye(self.dim, dtype=torch.float64)
        return weights.to(dtype), means.to(dtype), covs.to(dtype)

    def sample(self, weights, means, covs, n_points: int, generator=None):
        """``(theta (B, d), y (B, N, d))``: a parameter from each task's prior and ``n_points`` observations of it."""
        weights, means, covs = weights.double(), means.double(), covs.double()
        batch = weights.shape[0]
        k = torch.multinomial(weights, 1, generator=generator)[:, 0]
        rows = torch.arange(batch)
        chol = torch.linalg.cholesky(covs[rows, k])
        theta = means[rows, k] + (chol @ torch.randn(batch, self.dim, 1, generator=generator, dtype=torch.float64))[..., 0]
        y = theta[:, None] + math.sqrt(self.noise_var) * torch.randn(batch, n_points, self.dim, generator=generator, dtype=torch.float64)
        return theta, y


def gmm_mean_posterior(weights, means, covs, y, noise_var: float, valid=None):
    """The exact posterior of theta under a Gaussian-mixture prior and y_n ~ N(theta, noise_var I): a mixture again.

    Component k: precision P_k = S_k^-1 + n / s^2 I, mean m'_k = P_k^-1 (S_k^-1 m_k + sum_n y_n / s^2),
    weight proportional to w_k N(ybar; m_k, S_k + s^2 / n I) (the evidence of the sufficient
    statistic; the factor common to all components cancels). ``valid`` (B, N) marks real points.
    Returns ``(weights (B, K), means (B, K, d), covs (B, K, d, d))`` in float64.
    """
    w, m, s, y = weights.double(), means.double(), covs.double(), y.double()
    if valid is None:
        valid = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
    n = valid.sum(1).double()  # (B,)
    total = (y * valid[..., None]).sum(1)  # (B, d)
    d = y.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=y.device)
    prior_prec = torch.linalg.inv(s)
    post_cov = torch.linalg.inv(prior_prec + (n / noise_var)[:, None, None, None] * eye)
    post_mean = (post_cov @ ((prior_prec @ m[..., None])[..., 0] + (total / noise_var)[:, None])[..., None])[..., 0]
    safe_n = n.clamp_min(1.0)
    ybar = total / safe_n[:, None]
    evidence_cov = s + (noise_var / safe_n)[:, None, None, None] * eye
    log_ev = torch.distributions.MultivariateNormal(m, covariance_matrix=evidence_cov).log_prob(ybar[:, None])
    log_ev = torch.where(n[:, None] > 0, log_ev, torch.zeros_like(log_ev))
    post_w = torch.softmax(torch.log(w.clamp_min(1e-300)) + log_ev, dim=-1)
    return post_w, post_mean, post_cov


def gmm_log_prob(weights, means, covs, x):
    """log of sum_k w_k N(x; m_k, S_k) for x (B, d) or (S, B, d) against mixtures (B, K, ...): (B,) or (S, B)."""
    comp = torch.distributions.MultivariateNormal(means, covariance_matrix=covs)
    return torch.logsumexp(torch.log(weights.clamp_min(1e-300)) + comp.log_prob(x.unsqueeze(-2)), dim=-1)


def gmm_sample(weights, means, covs, n: int, generator=None):
    """(n, B, d) draws from mixtures (B, K, ...)."""
    batch, d = weights.shape[0], means.shape[-1]
    k = torch.multinomial(weights.double(), n, replacement=True, generator=generator).T  # (n, B)
    rows = torch.arange(batch).expand(n, batch)
    chol = torch.linalg.cholesky(covs.double())[rows, k]
    eps = torch.randn(n, batch, d, 1, generator=generator, dtype=torch.float64)
    return means.double()[rows, k] + (chol @ eps)[..., 0]


def gmm_kl(p, q, n_samples: int = 4096, generator=None) -> torch.Tensor:
    """Monte Carlo KL(p || q) between two mixtures (each ``(weights, means, covs)``): (B,)."""
    x = gmm_sample(*p, n_samples, generator=generator)
    return (gmm_log_prob(*[t.double() for t in p], x) - gmm_log_prob(*[t.double() for t in q], x)).mean(0)


def gaussian_sets(batch: int, set_size: int, generator=None, mean_range=(-2.0, 2.0), std_range=(0.2, 1.5), dtype=torch.float64):
    """``(samples (B, N), mean (B,), std (B,))``: ``set_size`` draws of each of ``batch`` random 1-D Gaussians."""
    mean = mean_range[0] + (mean_range[1] - mean_range[0]) * torch.rand(batch, generator=generator, dtype=torch.float64)
    std = std_range[0] + (std_range[1] - std_range[0]) * torch.rand(batch, generator=generator, dtype=torch.float64)
    samples = mean[:, None] + std[:, None] * torch.randn(batch, set_size, generator=generator, dtype=torch.float64)
    return samples.to(dtype), mean.to(dtype), std.to(dtype)


def w2_gaussian(mean_a, std_a, mean_b, std_b):
    """The exact 2-Wasserstein distance between 1-D Gaussians: sqrt((m_a - m_b)^2 + (s_a - s_b)^2)."""
    return torch.sqrt((mean_a - mean_b) ** 2 + (std_a - std_b) ** 2)


def spearman(a, b) -> float:
    """Spearman rank correlation of two 1-D arrays (ties broken by order)."""
    ra = np.argsort(np.argsort(np.asarray(a, dtype=np.float64)))
    rb = np.argsort(np.argsort(np.asarray(b, dtype=np.float64)))
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------------------------------------
# Set encoders
# ---------------------------------------------------------------------------------------------


def mlp(n_in: int, hidden: int, n_out: int, layers: int = 2) -> nn.Sequential:
    """``layers`` linear maps with GELU between them (``layers`` = 1: one linear map)."""
    dims = [n_in] + [hidden] * (layers - 1) + [n_out]
    mods: list[nn.Module] = []
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(nn.GELU())
    return nn.Sequential(*mods)


def masked_pool(h: torch.Tensor, valid: torch.Tensor | None, pool: str) -> torch.Tensor:
    """Pool (B, N, D) over the set axis, ignoring elements where ``valid`` (B, N) is False."""
    if valid is None:
        valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    w = valid[..., None].to(h.dtype)
    if pool == "sum":
        return (h * w).sum(1)
    if pool == "mean":
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)
    if pool == "max":
        return h.masked_fill(~valid[..., None], float("-inf")).amax(1)
    raise ValueError(f"pool must be sum, mean or max, got '{pool}'")


class DeepSetEncoder(nn.Module):
    """``rho(pool_n phi(s_n))``: a permutation-invariant embedding of a set (B, N, F) -> (B, D_out)."""

    def __init__(self, n_in: int, hidden: int, n_out: int, layers: int = 2, pool: str = "mean"):
        super().__init__()
        masked_pool(torch.zeros(1, 1, 1), None, pool)  # reject an unknown pool now
        self.phi = mlp(n_in, hidden, hidden, layers)
        self.rho = mlp(hidden, hidden, n_out, layers)
        self.pool = pool

    def forward(self, s: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.rho(masked_pool(self.phi(s), valid, self.pool))


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, Q, D) to a set (B, N, D) with no positions: equivariant in
    the queries, invariant to permuting the set. The scores go through the dispatched ``attention`` op."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor | None = None, pattern: AttentionPattern = FULL) -> torch.Tensor:
        B, Q, D = queries.shape
        N, H = keys.shape[1], self.n_heads
        q = self.q_proj(queries).view(B, Q, H, D // H).transpose(1, 2)
        k, v = self.kv_proj(keys).view(B, N, 2, H, D // H).permute(2, 0, 3, 1, 4)
        q_pos = torch.arange(Q, device=queries.device).expand(B, Q)
        kv_pos = torch.arange(N, device=queries.device).expand(B, N)
        out = kernels.call("attention", q, k, v, pattern=pattern, q_pos=q_pos, kv_pos=kv_pos, kv_valid=valid)
        return self.out_proj(out.transpose(1, 2).reshape(B, Q, D))


class AttentionPool(nn.Module):
    """``n_seeds`` learned seed vectors attend to the set (Set Transformer's pooling by multi-head attention):
    (B, N, D) -> (B, n_seeds, D), invariant to permuting the set."""

    def __init__(self, d_model: int, n_heads: int, n_seeds: int = 1):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(n_seeds, d_model) * 0.02)
        self.attention = CrossAttention(d_model, n_heads)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = mlp(d_model, 2 * d_model, d_model)

    def forward(self, s: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        seeds = self.seeds.to(s.dtype).expand(s.shape[0], -1, -1)
        h = seeds + self.attention(seeds, s, valid)
        return h + self.ffn(self.norm(h))


# ---------------------------------------------------------------------------------------------
# The context/query attention pattern
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextQueryPattern(AttentionPattern):
    """Context positions ``0 .. n_context - 1`` attend to each other; a query (any later position)
    attends to the context and to itself only.

    With ``queries_see_queries`` the queries also attend to each other (the form a distribution
    transformer uses for its mixture-component tokens, and the broken variant of a PFN's mask).
    The pattern is not causal: incremental decoding does not apply.
    """

    kind: str = "context_query"
    n_context: int = 0
    queries_see_queries: bool = False

    def __post_init__(self):
        if self.n_context < 0:
            raise ValueError(f"n_context must be >= 0, got {self.n_context}")

    @property
    def is_causal(self) -> bool:
        return False

    def allowed(self, q_pos: torch.Tensor, kv_pos: torch.Tensor) -> torch.Tensor:
        kv_context = kv_pos < self.n_context
        q_context = q_pos < self.n_context
        query_keys = (kv_pos == q_pos) | torch.as_tensor(self.queries_see_queries, device=q_pos.device)
        return torch.where(q_context, kv_context, kv_context | query_keys)


# ---------------------------------------------------------------------------------------------
# The bar (Riemann) distribution
# ---------------------------------------------------------------------------------------------


class BarDistribution(nn.Module):
    """A distribution over the reals from ``n`` logits: bar b has probability softmax(logits)_b spread
    uniformly over ``[borders[b], borders[b + 1])``, so the density is ``p_b / width_b`` and integrates
    to 1 over ``[borders[0], borders[-1]]``.

    Values outside the outer borders are scored in the nearest outer bar (the support is bounded; PFN's
    full-support variant with half-normal tails is not implemented). ``borders_from_samples`` puts
    the borders at quantiles of prior draws, so every bar holds about the same prior mass.
    """

    def __init__(self, borders: torch.Tensor):
        super().__init__()
        borders = torch.as_tensor(borders, dtype=torch.float64)
        if borders.dim() != 1 or len(borders) < 2 or not bool((borders[1:] > borders[:-1]).all()):
            raise ValueError("bar borders must be a strictly increasing 1-D sequence of at least 2 values")
        self.register_buffer("borders", borders.float())

    @staticmethod
    def borders_from_samples(samples: torch.Tensor, n_bars: int, margin: float = 0.1) -> torch.Tensor:
        """``n_bars + 1`` borders at equally spaced quantiles of ``samples``; the outer ones pushed out by ``margin`` of the range."""
        values = samples.double().flatten().sort().values
        q = torch.quantile(values, torch.linspace(0, 1, n_bars + 1, dtype=torch.float64))
        span = float(q[-1] - q[0])
        q[0], q[-1] = q[0] - margin * span, q[-1] + margin * span
        for i in range(1, len(q)):  # strictly increasing even with repeated samples
            q[i] = torch.maximum(q[i], q[i - 1] + 1e-9 * max(span, 1.0))
        return q

    @staticmethod
    def gaussian_borders(n_bars: int, scale: float = 1.0, tail: float = 4.0) -> torch.Tensor:
        """Borders of equal mass under N(0, scale^2): the inner ones at its quantiles i / n_bars, the outer ones at +-tail * scale."""
        inner = torch.distributions.Normal(0.0, 1.0).icdf(torch.arange(1, n_bars, dtype=torch.float64) / n_bars)
        inner = inner.clamp(-tail + 1e-6, tail - 1e-6)
        return scale * torch.cat([torch.tensor([-tail], dtype=torch.float64), inner, torch.tensor([tail], dtype=torch.float64)])

    @property
    def n_bars(self) -> int:
        return self.borders.numel() - 1

    @property
    def widths(self) -> torch.Tensor:
        return self.borders[1:] - self.borders[:-1]

    @property
    def centers(self) -> torch.Tensor:
        return 0.5 * (self.borders[1:] + self.borders[:-1])

    def bucket(self, y: torch.Tensor) -> torch.Tensor:
        """The bar index of each value (outer bars for values outside the support)."""
        b = self.borders.to(y.dtype)
        return (torch.bucketize(y.contiguous(), b[1:-1], right=True)).clamp(0, self.n_bars - 1)

    def log_prob(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log density at ``y`` (shape of logits without the last axis): log p_b - log width_b."""
        logp = F.log_softmax(logits, dim=-1)
        b = self.bucket(y.to(logits.dtype))
        return logp.gather(-1, b[..., None])[..., 0] - torch.log(self.widths.to(logits.dtype))[b]

    def density(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The density at ``y``; zero outside ``[borders[0], borders[-1])``."""
        b = self.borders.to(logits.dtype)
        inside = (y >= b[0]) & (y < b[-1])
        return torch.where(inside, self.log_prob(logits, y).exp(), torch.zeros_like(y, dtype=logits.dtype))

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return (F.softmax(logits, dim=-1) * self.centers.to(logits.dtype)).sum(-1)

    def variance(self, logits: torch.Tensor) -> torch.Tensor:
        """sum_b p_b (c_b^2 + w_b^2 / 12) - mean^2 (a uniform bar's second moment)."""
        p = F.softmax(logits, dim=-1)
        c, w = self.centers.to(logits.dtype), self.widths.to(logits.dtype)
        return (p * (c**2 + w**2 / 12)).sum(-1) - self.mean(logits) ** 2

    def cdf(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """P(Y <= y): the mass of the bars below y plus the covered share of y's bar."""
        p = F.softmax(logits, dim=-1)
        b = self.borders.to(logits.dtype)
        y = y.to(logits.dtype).clamp(b[0], b[-1])
        share = ((y[..., None] - b[:-1]) / (b[1:] - b[:-1])).clamp(0, 1)
        return (p * share).sum(-1)

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw per row: a bar from the categorical, then a uniform point inside it."""
        flat = logits.reshape(-1, logits.shape[-1])
        b = torch.multinomial(F.softmax(flat.double(), -1), 1, generator=generator)[:, 0]
        u = torch.rand(flat.shape[0], generator=generator, dtype=torch.float64, device=flat.device)
        lo, w = self.borders.double()[b], self.widths.double()[b]
        return (lo + u * w).to(logits.dtype).view(logits.shape[:-1])


# ---------------------------------------------------------------------------------------------
# Registered parts: the point-set tokenizer and the gp-prior data set
# ---------------------------------------------------------------------------------------------


class PointSetTokenizer:
    """Tasks are sets of real-valued points, not token ids: ``encode``/``decode`` pass them through."""

    vocab_size = 0
    eos_id = None

    def encode(self, data):
        return data

    def decode(self, data):
        return data


def build_point_set_tokenizer(config: PointSetTokenizerConfig | None = None, ctx=None) -> PointSetTokenizer:
    return PointSetTokenizer()


class GpTasks(torch.utils.data.Dataset):
    """Task i of a split: ``{"x": (N, D), "y": (N,), "f": (N,)}`` drawn with the seed (seed, split, i)."""

    def __init__(self, prior: GPPrior, n_points: int, size: int, seed: int, split_index: int):
        self.prior, self.n_points, self.size, self.seed, self.split_index = prior, n_points, size, seed, split_index

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.split_index, int(i)]).generate_state(1)[0]))
        x, y, f = self.prior.sample(1, self.n_points, generator=gen, dtype=torch.float32)
        return {"x": x[0], "y": y[0], "f": f[0]}


class GpPriorData(DataSource):
    """The ``gp-prior`` data set: train/val/test tasks from one GP prior, disjoint seeds per split."""

    SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}

    def __init__(self, config: GpPriorConfig):
        self.config = config
        self.prior = GPPrior(config.lengthscale, config.outputscale, config.noise, config.x_dim, config.x_low, config.x_high)
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.info = {"modality": "tabular", "name": "gp-prior", "x_dim": config.x_dim, "n_points": config.n_points,
                     "y_scale": (config.outputscale + config.noise**2) ** 0.5}

    def load(self, split: str, tokenizer=None, ctx=None):
        if split not in self.SPLIT_INDEX:
            raise ValueError(f"unknown split '{split}' (known: train, val, test)")
        size = self.config.train_tasks if split == "train" else self.config.eval_tasks
        return GpTasks(self.prior, self.config.n_points, size, self.config.seed, self.SPLIT_INDEX[split])

    def tasks(self, split: str, count: int | None = None):
        """The first ``count`` tasks of a split stacked: ``(x (T, N, D), y (T, N), f (T, N))`` in float64."""
        ds = self.load(split)
        count = len(ds) if count is None else min(count, len(ds))
        items = [ds[i] for i in range(count)]
        return tuple(torch.stack([it[k] for it in items]).double() for k in ("x", "y", "f"))


def build_gp_prior(config: GpPriorConfig, ctx=None) -> GpPriorData:
    return GpPriorData(config)
