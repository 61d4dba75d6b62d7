"""The distribution transformer: a prior mixture and a data set in, a posterior mixture out.

A pass (``PosteriorNll.posterior``): the n data points and the K prior components are embedded
by the ``gmm`` head; the backbone takes ``[data tokens | component tokens]`` with
``ContextQueryPattern(n)`` telling it where the data end, and in every block the component tokens
attend to each other (self-attention) and then to the data tokens (cross-attention); the head
reads output token k as posterior component k. Training minimises ``-log q(theta)`` for the theta
that generated the data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genloom.core.data import DataSource
from genloom.core.model import Backbone, Head, Objective
from genloom.plugins.distribution_transformer import (
    DistributionTransformerConfig,
    GaussianMeanTasksConfig,
    GmmHeadConfig,
    PosteriorNllConfig,
)
from genloom.toolkit.amortized import ContextQueryPattern, CrossAttention, GaussianMeanPrior, gmm_kl, gmm_log_prob, gmm_mean_posterior, mlp

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class GaussianMeanTasks(torch.utils.data.Dataset):
    """Task i: ``{"weights": (K,), "means": (K, d), "covs": (K, d, d), "theta": (d,), "y": (N, d)}``."""

    def __init__(self, prior: GaussianMeanPrior, n_points: int, size: int, seed: int, split_index: int):
        self.prior, self.n_points, self.size, self.seed, self.split_index = prior, n_points, size, seed, split_index

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.split_index, int(i)]).generate_state(1)[0]))
        w, m, c = self.prior.sample_prior(1, generator=gen)
        theta, y = self.prior.sample(w, m, c, self.n_points, generator=gen)
        return {"weights": w[0].float(), "means": m[0].float(), "covs": c[0].float(), "theta": theta[0].float(), "y": y[0].float()}


class GaussianMeanData(DataSource):
    SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}

    def __init__(self, config: GaussianMeanTasksConfig):
        self.config = config
        self.prior = GaussianMeanPrior(config.dim, config.components, config.noise_var, config.mean_scale, config.var_low, config.var_high)
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.info = {"modality": "tabular", "name": "gaussian-mean-tasks", "theta_dim": config.dim, "n_points": config.n_points}

    def load(self, split: str, tokenizer=None, ctx=None):
        if split not in self.SPLIT_INDEX:
            raise ValueError(f"unknown split '{split}' (known: train, val, test)")
        size = self.config.train_tasks if split == "train" else self.config.eval_tasks
        return GaussianMeanTasks(self.prior, self.config.n_points, size, self.config.seed, self.SPLIT_INDEX[split])

    def tasks(self, split: str, count: int | None = None) -> dict[str, torch.Tensor]:
        """The first ``count`` tasks of a split, stacked, in float64."""
        ds = self.load(split)
        items = [ds[i] for i in range(len(ds) if count is None else min(count, len(ds)))]
        return {k: torch.stack([it[k] for it in items]).double() for k in items[0]}


def build_data(config: GaussianMeanTasksConfig, ctx=None) -> GaussianMeanData:
    return GaussianMeanData(config)


# ---------------------------------------------------------------------------------------------
# Head: components and data points in, posterior components out
# ---------------------------------------------------------------------------------------------


def _tril_index(dim: int):
    return torch.tril_indices(dim, dim)


class GmmHead(Head):
    def __init__(self, dim: int, d_model: int, hidden: int):
        super().__init__()
        self.dim = dim
        rows, cols = _tril_index(dim)
        self.register_buffer("tril_rows", rows, persistent=False)
        self.register_buffer("tril_cols", cols, persistent=False)
        n_tril = rows.numel()
        self.component_in = mlp(1 + dim + n_tril, hidden, d_model)
        self.data_in = mlp(dim, hidden, d_model)
        self.out = mlp(d_model, hidden, 1 + dim + n_tril)

    def _chol_features(self, covs):
        chol = torch.linalg.cholesky(covs)
        feats = chol[..., self.tril_rows, self.tril_cols]
        diag = self.tril_rows == self.tril_cols
        return torch.where(diag, torch.log(feats.clamp_min(1e-12)), feats)  # log of the diagonal

    def embed_components(self, weights, means, covs) -> torch.Tensor:
        """(B, K) weights, (B, K, d) means, (B, K, d, d) covariances -> (B, K, d_model)."""
        dtype = self.component_in[0].weight.dtype
        feats = torch.cat([torch.log(weights.clamp_min(1e-12))[..., None], means, self._chol_features(covs)], -1)
        return self.component_in(feats.to(dtype))

    def embed_data(self, y) -> torch.Tensor:
        """(B, N, d) -> (B, N, d_model)."""
        return self.data_in(y.to(self.data_in[0].weight.dtype))

    def embed(self, ids):
        raise TypeError("the gmm head embeds mixtures and data points: use embed_components / embed_data")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h)

    def mixture(self, raw: torch.Tensor, weights, means, covs):
        """Posterior ``(weights (B, K), means (B, K, d), covs (B, K, d, d))`` from the read-out (B, K, P),
        each component an update of its prior component; weights sum to 1, covariances are positive definite."""
        d = self.dim
        post_w = torch.softmax(torch.log(weights.to(raw.dtype).clamp_min(1e-12)) + raw[..., 0], dim=-1)
        post_m = means.to(raw.dtype) + raw[..., 1:1 + d]
        delta = torch.zeros(*raw.shape[:-1], d, d, dtype=raw.dtype, device=raw.device)
        delta[..., self.tril_rows, self.tril_cols] = raw[..., 1 + d:]
        prior_l = torch.linalg.cholesky(covs.to(raw.dtype))
        # off-diagonal: prior + delta; diagonal: prior * exp(delta) + 1e-4 > 0, so L L^T is positive definite
        diag = torch.diagonal(prior_l, dim1=-2, dim2=-1) * torch.exp(torch.diagonal(delta, dim1=-2, dim2=-1)) + 1e-4
        chol = torch.tril(prior_l + delta, diagonal=-1) + torch.diag_embed(diag)
        return post_w, post_m, chol @ chol.transpose(-1, -2)


# ---------------------------------------------------------------------------------------------
# Backbone: component self-attention and component -> data cross-attention
# ---------------------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.self_norm, self.cross_norm, self.data_norm, self.ffn_norm = (nn.LayerNorm(d_model) for _ in range(4))
        self.self_attention = CrossAttention(d_model, n_heads)
        self.cross_attention = CrossAttention(d_model, n_heads)
        self.ffn = mlp(d_model, 4 * d_model, d_model)

    def forward(self, components, data, data_valid=None):
        h = self.self_norm(components)
        components = components + self.self_attention(h, h)
        components = components + self.cross_attention(self.cross_norm(components), data, data_valid)
        return components + self.ffn(self.ffn_norm(components))


class DistributionTransformer(Backbone):
    """``h = [data (n) | components (K)]``; ``pattern.n_context`` = n. Data rows come back unchanged."""

    patterns = frozenset({"context_query"})

    def __init__(self, cfg: DistributionTransformerConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.empty = nn.Parameter(torch.randn(1, 1, cfg.d_model) * 0.5)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, h, *, pattern=None, state=None, valid=None):
        if state is not None:
            raise NotImplementedError("the distribution transformer maps a whole prior and data set at once; it has no incremental state")
        if not isinstance(pattern, ContextQueryPattern):
            raise ValueError("the distribution transformer needs a ContextQueryPattern whose n_context is the number of data tokens")
        n = pattern.n_context
        data, components = h[:, :n], h[:, n:]
        # a learned token every component always sees beside the data: softmax attention averages, so
        # without it the components could not tell 2 observations from 200 (the posterior width needs n)
        keys = torch.cat([self.empty.to(h.dtype).expand(h.shape[0], 1, -1), data], dim=1)
        keys_valid = None if valid is None else torch.cat([torch.ones_like(valid[:, :1]), valid[:, :n]], dim=1)
        for block in self.blocks:
            components = block(components, block.data_norm(keys), keys_valid)
        return torch.cat([data, self.norm(components)], dim=1)

    def init_state(self, batch_size, capacity=256, device=None, dtype=None):
        raise NotImplementedError("the distribution transformer has no incremental state")


def build_backbone(config: DistributionTransformerConfig, ctx=None) -> DistributionTransformer:
    return DistributionTransformer(config)


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------


class PosteriorNll(Objective):
    pattern = ContextQueryPattern(n_context=0)

    def __init__(self, min_points: int = 0, kl_samples: int = 2048):
        super().__init__()
        self.min_points, self.kl_samples = min_points, kl_samples

    def posterior(self, model, weights, means, covs, y, valid=None):
        """The predicted posterior mixture given a prior mixture and observations y (B, n, d)."""
        head = model.head
        n = y.shape[1]
        tokens = torch.cat([head.embed_data(y), head.embed_components(weights, means, covs)], dim=1)
        full_valid = None if valid is None else torch.cat([valid, torch.ones(valid.shape[0], weights.shape[1], dtype=torch.bool, device=valid.device)], 1)
        h = model.backbone(tokens, pattern=ContextQueryPattern(n_context=n), valid=full_valid)
        return head.mixture(head(h[:, n:]), weights, means, covs)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        y = batch["y"]
        n = int(torch.randint(min(self.min_points, y.shape[1]), y.shape[1] + 1, ()).item())
        post = self.posterior(model, batch["weights"], batch["means"], batch["covs"], y[:, :n])
        nll = -gmm_log_prob(*post, batch["theta"].to(post[1].dtype)).mean()
        return {"loss": nll, "nll": nll.detach()}

    def evaluate_run(self, gen, options: dict) -> str:
        """``genloom evaluate RUN [tasks=N]``: Monte Carlo KL(exact posterior || predicted) on held-out test tasks."""
        from genloom.core.errors import ConfigError
        from genloom.core.model import build_component

        unknown = [k for k in options if k != "tasks"]
        if unknown:
            raise ConfigError(f"unknown evaluate option(s) {', '.join(unknown)} (allowed: tasks)")
        spec = gen.model.config.components.get("data") if gen.model.config is not None else None
        data = build_component(spec, gen.ctx) if spec is not None else None
        if not isinstance(data, GaussianMeanData):
            raise ConfigError("this evaluation needs the run's data set to be gaussian-mean-tasks (its exact posterior is the reference)", path="data")
        figures = posterior_kl(gen.model.eval(), data, int(options.get("tasks", 256)), samples=self.kl_samples)
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in figures.items())
        return f"gaussian-mean-tasks test tasks, KL(exact || predicted) in nats\n\n| figure | value |\n| --- | --- |\n{rows}\n"


@torch.no_grad()
def posterior_kl(model, data: GaussianMeanData, count: int, samples: int = 2048, points=(0, 1, 4, 16)) -> dict[str, float]:
    """Mean KL(exact posterior || predicted) over ``count`` test tasks for several numbers of observations,
    beside the KL of the prior itself (what a model that ignores the data would score)."""
    tasks = data.tasks("test", count)
    gen = torch.Generator().manual_seed(0)
    out = {}
    dtype = next(model.parameters()).dtype
    for n in points:
        if n > tasks["y"].shape[1]:
            continue
        y = tasks["y"][:, :n]
        exact = gmm_mean_posterior(tasks["weights"], tasks["means"], tasks["covs"], y, data.prior.noise_var)
        pred = model.objective.posterior(model, tasks["weights"].to(dtype), tasks["means"].to(dtype), tasks["covs"].to(dtype), y.to(dtype))
        out[f"kl_n{n}"] = float(gmm_kl(exact, tuple(p.double() for p in pred), samples, generator=gen).mean())
        out[f"kl_prior_n{n}"] = float(gmm_kl(exact, (tasks["weights"], tasks["means"], tasks["covs"]), samples, generator=gen).mean())
    return out


def build_head(config: GmmHeadConfig, ctx=None) -> GmmHead:
    if config.dim is None or config.d_model is None:
        config.bind(ctx)
    return GmmHead(config.dim, config.d_model, config.hidden)


def build_objective(config: PosteriorNllConfig, ctx=None) -> PosteriorNll:
    return PosteriorNll(config.min_points, config.kl_samples)
