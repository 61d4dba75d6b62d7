"""MPNP: a conditional NP whose function uncertainty comes only from generated pseudo data.

One training step (``Mpnp.loss``), for a batch of tasks cut at a context size c:

1. encode the context: r_C = mean_i phi(x_i, y_i) (and phi(x_i, y_i) itself for the attentive path);
2. draw K pseudo-data sets: pseudo inputs x~ uniform on the data range, pseudo labels
   y~ = g(r_C, x~, eps), eps ~ N(0, I) (the implicit predictive);
3. re-condition on C u Z_k (the pooled representation of the union) and score every target:
   log p_k = sum_t log N(y_t; mu_k(x_t), sigma_k(x_t)^2);
4. loss = -[logsumexp_k log p_k - log K] / T  -  sum_t log N(y_t; mu_C(x_t), sigma_C(x_t)^2) / T.

The model has no latent variable: with the pseudo data fixed a prediction is deterministic, and
with n_pseudo = 0 every function sample is the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Backbone, Head, Objective
from genloom.plugins.mpnp import MpnpConfig, NpEncoderConfig, NpGaussianHeadConfig
from genloom.toolkit.amortized import ContextQueryPattern, CrossAttention, GPPrior, masked_pool, mlp


class NpGaussianHead(Head):
    def __init__(self, x_dim: int, d_model: int, hidden: int, min_scale: float):
        super().__init__()
        self.context_in = mlp(x_dim + 1, hidden, d_model)
        self.target_in = mlp(x_dim, hidden, d_model)
        self.out = nn.Linear(d_model, 2)
        self.min_scale = min_scale

    def embed_points(self, x, y=None):
        dtype = self.target_in[0].weight.dtype
        if y is None:
            return self.target_in(x.to(dtype))
        return self.context_in(torch.cat([x.to(dtype), y.to(dtype)[..., None]], -1))

    def embed(self, ids):
        raise TypeError("the np-gaussian head embeds real-valued points: use embed_points(x, y)")

    def forward(self, h):
        """(mean, scale) of each target's label, each (B, T)."""
        raw = self.out(h)
        return raw[..., 0], self.min_scale + F.softplus(raw[..., 1])


class NpEncoder(Backbone):
    """``h = [context (n) | targets]`` under ``ContextQueryPattern(n)``: context rows -> phi -> masked mean
    pool r; target rows -> rho([h_t, r]). Context rows come back as phi(h)."""

    patterns = frozenset({"context_query"})

    def __init__(self, cfg: NpEncoderConfig):
        super().__init__()
        self.phi = mlp(cfg.d_model, cfg.d_model, cfg.d_model, cfg.layers)
        self.rho = mlp((3 if cfg.attention else 2) * cfg.d_model, cfg.d_model, cfg.d_model, cfg.layers)
        self.attention = CrossAttention(cfg.d_model, cfg.n_heads) if cfg.attention else None

    def represent(self, context_h, valid=None):
        """The context representation ``(r (B, D), per-point features (B, n, D), valid)``; r is the
        permutation-invariant masked mean of phi, the features feed the attentive path."""
        phi = self.phi(context_h)
        return masked_pool(phi, valid, "mean"), phi, valid

    def decode(self, target_h, rep):
        r, phi, valid = rep
        parts = [target_h, r[:, None].expand(-1, target_h.shape[1], -1)]
        if self.attention is not None:  # each target attends to the context points (no positions: invariant)
            parts.append(self.attention(target_h, phi, valid))
        return self.rho(torch.cat(parts, -1))

    def forward(self, h, *, pattern=None, state=None, valid=None):
        if state is not None or not isinstance(pattern, ContextQueryPattern):
            raise ValueError("the np-encoder runs whole sets under a ContextQueryPattern (no incremental state)")
        n = pattern.n_context
        rep = self.represent(h[:, :n], None if valid is None else valid[:, :n])
        return torch.cat([rep[1], self.decode(h[:, n:], rep)], dim=1)

    def init_state(self, batch_size, capacity=256, device=None, dtype=None):
        raise NotImplementedError("the np-encoder has no incremental state")


class Mpnp(Objective):
    pattern = ContextQueryPattern(n_context=0)

    def __init__(self, config: MpnpConfig, d_model: int, x_dim: int, x_range: tuple[float, float]):
        super().__init__()
        self.config = config
        self.x_dim, self.x_range = x_dim, x_range
        # the implicit predictive of pseudo labels: g(r_C, x~, eps)
        self.generator = mlp(d_model + x_dim + config.noise_dim, d_model, 1, 3)

    # -- the pieces ---------------------------------------------------------------------------

    def context_representation(self, model, x, y):
        return model.backbone.represent(model.head.embed_points(x, y))

    def pseudo_inputs(self, batch: int, dtype, device, generator=None):
        lo, hi = self.x_range
        return lo + (hi - lo) * torch.rand(batch, self.config.n_pseudo, self.x_dim, generator=generator, dtype=dtype, device=device)

    def pseudo_labels(self, rep, x_pseudo, noise):
        """y~ = g(r_C, x~, eps): (B, n_pseudo)."""
        r = rep[0]
        feats = torch.cat([r[:, None].expand(-1, x_pseudo.shape[1], -1), x_pseudo, noise], -1)
        return self.generator(feats)[..., 0]

    def predict(self, model, x_context, y_context, x_target):
        """The Gaussian ``(mean, scale)`` at the targets given a context (no pseudo data)."""
        r = model.backbone.represent(model.head.embed_points(x_context, y_context))
        return model.head(model.backbone.decode(model.head.embed_points(x_target), r))

    def function_samples(self, model, x_context, y_context, x_target, num_samples: int | None = None, generator=None, noise=None, x_pseudo=None):
        """K functions: ``(mean (K, B, T), scale (K, B, T))`` of the predictions re-conditioned on K pseudo-data draws.

        ``noise`` (K, B, n_pseudo, noise_dim) and ``x_pseudo`` (B, n_pseudo, D) fix the draws (they are
        the only randomness); otherwise they are drawn with ``generator``.
        """
        k = num_samples or self.config.num_pseudo_sets
        B, dtype, device = x_context.shape[0], x_context.dtype, x_context.device
        head, body = model.head, model.backbone
        context_h = head.embed_points(x_context, y_context)
        r = body.represent(context_h)
        if x_pseudo is None:
            x_pseudo = self.pseudo_inputs(B, dtype, device, generator)
        if noise is None:
            noise = torch.randn(k, B, self.config.n_pseudo, self.config.noise_dim, generator=generator, dtype=dtype, device=device)
        target_h = head.embed_points(x_target)
        means, scales = [], []
        for i in range(noise.shape[0]):
            y_pseudo = self.pseudo_labels(r, x_pseudo, noise[i])
            union = torch.cat([context_h, head.embed_points(x_pseudo, y_pseudo)], dim=1)  # C u Z_k
            mean, scale = head(body.decode(target_h, body.represent(union)))
            means.append(mean)
            scales.append(scale)
        return torch.stack(means), torch.stack(scales)

    # -- training ------------------------------------------------------------------------------

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]
        cfg = self.config
        c = int(torch.randint(cfg.min_context, min(cfg.max_context, x.shape[1] - 1) + 1, ()).item())
        xc, yc = x[:, :c], y[:, :c]
        normal = torch.distributions.Normal
        mean_c, scale_c = self.predict(model, xc, yc, x)
        conditional = normal(mean_c, scale_c).log_prob(y).mean(-1)  # (B,) per target
        if cfg.n_pseudo > 0:
            means, scales = self.function_samples(model, xc, yc, x)
            joint = normal(means, scales).log_prob(y[None]).sum(-1)  # (K, B)
            marginal = (torch.logsumexp(joint, 0) - math.log(joint.shape[0])) / y.shape[1]
        else:
            marginal = conditional
        loss = -(marginal.mean() + conditional.mean())
        return {"loss": loss, "marginal_nll": -marginal.mean().detach(), "conditional_nll": -conditional.mean().detach()}

    def evaluate_run(self, gen, options: dict) -> str:
        """``genloom evaluate RUN [tasks=N] [context=C] [samples=K]``: function samples against the exact GP posterior."""
        from genloom.core.errors import ConfigError
        from genloom.core.model import build_component

        unknown = [k for k in options if k not in ("tasks", "context", "samples")]
        if unknown:
            raise ConfigError(f"unknown evaluate option(s) {', '.join(unknown)} (allowed: tasks, context, samples)")
        spec = gen.model.config.components.get("data") if gen.model.config is not None else None
        data = build_component(spec, gen.ctx) if spec is not None else None
        if data is None or not isinstance(getattr(data, "prior", None), GPPrior):
            raise ConfigError("the MPNP evaluation needs the run's data set to be gp-prior (its exact posterior is the reference)", path="data")
        x, y, _ = data.tasks("test", int(options.get("tasks", 256)))
        figures = posterior_agreement(gen.model.eval(), data.prior, x, y, int(options.get("context", self.config.eval_context)),
                                      int(options.get("samples", 32)))
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in figures.items())
        return f"gp-prior test tasks: {x.shape[0]}\n\n| figure | value |\n| --- | --- |\n{rows}\n"


@torch.no_grad()
def posterior_agreement(model, prior: GPPrior, x, y, context: int, samples: int = 32, seed: int = 0) -> dict[str, float]:
    """MPNP's function samples against the exact GP posterior at the non-context points of tasks (x (T, N, D), y (T, N)).

    ``mse_to_posterior_mean``: the mean over function samples vs the exact posterior mean;
    ``posterior_mean_variance``: the spread of the exact mean (a constant's MSE); ``nll``: the labels
    under the mixture over function samples; ``nll_exact``; ``spread_spearman``: rank correlation,
    over all query points, of the function samples' standard deviation with the exact posterior
    standard deviation of f (does the uncertainty sit where it should?).
    """
    objective = model.objective
    dtype = next(model.parameters()).dtype
    xc, yc, xq, yq = x[:, :context], y[:, :context], x[:, context:], y[:, context:]
    gen = torch.Generator().manual_seed(seed)
    means, scales = objective.function_samples(model, xc.to(dtype), yc.to(dtype), xq.to(dtype), samples, generator=gen)
    means, scales = means.double(), scales.double()
    exact_mean, exact_var = prior.posterior(xc, yc, xq)
    log_mix = torch.logsumexp(torch.distributions.Normal(means, scales).log_prob(yq[None]), 0) - math.log(samples)
    nll_exact = 0.5 * (math.log(2 * math.pi) + exact_var.log() + (yq - exact_mean) ** 2 / exact_var)
    from genloom.toolkit.amortized import spearman

    f_std = (exact_var - prior.noise**2).clamp_min(0).sqrt()
    return {
        "mse_to_posterior_mean": float(((means.mean(0) - exact_mean) ** 2).mean()),
        "posterior_mean_variance": float(((exact_mean - exact_mean.mean()) ** 2).mean()),
        "nll": float(-log_mix.mean()),
        "nll_exact": float(nll_exact.mean()),
        "function_sample_std": float(means.std(0).mean()),
        "spread_spearman": spearman(means.std(0).flatten().numpy(), f_std.flatten().numpy()),
    }


def build_head(config: NpGaussianHeadConfig, ctx=None) -> NpGaussianHead:
    if config.x_dim is None or config.d_model is None:
        config.bind(ctx)
    return NpGaussianHead(config.x_dim, config.d_model, config.hidden, config.min_scale)


def build_backbone(config: NpEncoderConfig, ctx=None) -> NpEncoder:
    return NpEncoder(config)


def build_objective(config: MpnpConfig, ctx) -> Mpnp:
    return Mpnp(config, ctx.d_model, ctx.get("x_dim", 1), (ctx.get("x_low", -1.0), ctx.get("x_high", 1.0)))
