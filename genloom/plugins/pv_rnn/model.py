"""PV-RNN's network, its free-energy loss and error regression.

``PvRnn.run(adaptive, horizon)``: for t < T the posterior ``N(tanh(A^mu_t), exp(A^sigma_t)^2)`` gives
z_t (its mean, or a sample), for the ``horizon`` steps after it the prior mean; ``d_t = GRU(z_t,
d_(t-1))``. Returns the deterministic states (B, T + horizon, d) and the per-step KL (B, T).
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Backbone, Objective
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.pv_rnn import PvRnnConfig, PvRnnObjectiveConfig


def gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p) -> torch.Tensor:
    """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) summed over the latent: (B, T)."""
    return (log_sigma_p - log_sigma_q + (torch.exp(2 * log_sigma_q) + (mu_q - mu_p) ** 2) / (2 * torch.exp(2 * log_sigma_p)) - 0.5).sum(-1)


class PvRnn(Backbone):
    patterns = frozenset({"full"})

    def __init__(self, config: PvRnnConfig):
        super().__init__()
        self.d_model, self.latent = config.d_model, config.latent
        self.cell = nn.GRUCell(config.latent, config.d_model)
        self.prior = nn.Linear(config.d_model, 2 * config.latent)

    def zero_adaptive(self, batch: int, length: int, dtype=None, device=None) -> torch.Tensor:
        """Adaptive vectors (B, T, 2k) at zero: posterior mean 0, std 1."""
        weight = self.prior.weight
        return torch.zeros(batch, length, 2 * self.latent, dtype=dtype or weight.dtype, device=device or weight.device)

    def run(self, adaptive: torch.Tensor, horizon: int = 0, sample: bool = False):
        batch, length, _ = adaptive.shape
        d = adaptive.new_zeros(batch, self.d_model)
        states, kls = [], []
        for t in range(length + horizon):
            mu_p, log_sigma_p = self.prior(d).chunk(2, -1)
            log_sigma_p = log_sigma_p.clamp(-6, 3)
            if t < length:
                a_mu, a_sigma = adaptive[:, t].chunk(2, -1)
                mu_q, log_sigma_q = torch.tanh(a_mu), a_sigma.clamp(-6, 3)
                z = mu_q + torch.exp(log_sigma_q) * torch.randn_like(mu_q) if sample else mu_q
                kls.append(gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p))
            else:
                z = mu_p
            d = self.cell(z, d)
            states.append(d)
        return torch.stack(states, 1), torch.stack(kls, 1) if kls else adaptive.new_zeros(batch, 0)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        raise ValueError("pv-rnn has no encoder: its posterior is inferred by error regression (the pv-rnn objective's predict)")

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("pv-rnn forecasts through error regression (the pv-rnn objective)")


class PvRnnObjective(Objective):
    pattern = FULL

    def __init__(self, config: PvRnnObjectiveConfig):
        super().__init__()
        self.config = config

    def free_energy(self, model, adaptive, tokens, meta_prior: float, sample: bool = False):
        """``(loss, prediction error, KL)`` of a window: MSE + w * KL / (steps * variates)."""
        states, kl = model.backbone.run(adaptive, sample=sample)
        error = ((model.head(states) - tokens) ** 2).mean()
        kl = kl.sum(1).mean() / (tokens.shape[1] * tokens.shape[2])
        loss = error + meta_prior * kl if meta_prior else error
        return loss, error, kl

    def error_regression(self, model, tokens, steps: int, adaptive=None, extra_parameters=()):
        """Adaptive vectors of the window ``tokens`` (B, T, V) after ``steps`` Adam steps on MSE + w KL.

        Only the adaptive vectors are optimised (``extra_parameters`` exists to show that the
        test notices when anything else moves). Returns ``(adaptive, errors per step)``.
        """
        adaptive = (model.backbone.zero_adaptive(tokens.shape[0], tokens.shape[1], tokens.dtype, tokens.device)
                    if adaptive is None else adaptive).detach().requires_grad_(True)
        optimizer = torch.optim.Adam([adaptive, *extra_parameters], lr=self.config.regression_lr)
        errors = []
        with torch.enable_grad():
            for _ in range(steps):
                loss, error, _ = self.free_energy(model, adaptive, tokens, self.config.meta_prior)
                optimizer.zero_grad(set_to_none=True)
                grad = torch.autograd.grad(loss, [adaptive, *extra_parameters])
                for p, g in zip([adaptive, *extra_parameters], grad):
                    p.grad = g
                optimizer.step()
                errors.append(float(error.detach()))
        return adaptive.detach(), errors

    def predict(self, model, x: torch.Tensor) -> torch.Tensor:
        """Forecast (B, horizon, V): error regression on the lookback, then the prior for ``horizon`` steps."""
        tokens, stats = model.tokenizer.encode(x)
        adaptive, _ = self.error_regression(model, tokens, self.config.regression_steps)
        horizon = model.tokenizer.horizon
        states, _ = model.backbone.run(adaptive, horizon)
        return model.tokenizer.decode(model.head(states), stats)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        tokens, stats = model.tokenizer.encode(batch["x"])
        future = batch["y"] if stats is None else (batch["y"] - stats[0]) / stats[1]  # scaled by the lookback's statistics, as in predict
        tokens = torch.cat([tokens, future.to(tokens.dtype)], 1)
        adaptive, _ = self.error_regression(model, tokens, self.config.train_regression_steps)
        adaptive.requires_grad_(True)
        loss, error, kl = self.free_energy(model, adaptive, tokens, self.config.meta_prior, sample=True)
        return {"loss": loss, "mse": error.detach(), "kl": kl.detach()}


def build(config: PvRnnConfig, ctx) -> PvRnn:
    ctx.set("d_model", config.d_model)
    return PvRnn(config)


def build_objective(config: PvRnnObjectiveConfig, ctx=None) -> PvRnnObjective:
    return PvRnnObjective(config)
