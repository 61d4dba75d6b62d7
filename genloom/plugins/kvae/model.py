"""The Koopman VAE: posterior, GRU prior, Koopman matrix, spectral penalty, generation.

One training step, in order:

1. tokens (B, T, V) -> head embedding (B, T, d) -> encoder -> q(z_t | x) = N(mu_q, sigma_q^2);
   z = mu_q + sigma_q * eps;
2. the prior GRU runs T steps on its own samples: p(z_bar_t | z_bar_<t) = N(mu_p, sigma_p^2);
3. A = argmin ||Z_bar_{2:T} - Z_bar_{1:T-1} A||^2 over the batch (``koopman_matrix``);
4. loss = MSE(decode(z), tokens) + beta * KL(q || p) + alpha * ||Z_bar_{2:T} - Z_bar_{1:T-1} A||^2
   + gamma * sum relu(|lambda(A)| - max_modulus)^2.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Backbone, Objective
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.kvae import KvaeConfig, KvaeObjectiveConfig


def koopman_matrix(latents: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """A (k, k) minimising ||Z_{t+1} - Z_t A||^2 over all t and the batch; latents (B, T, k)."""
    past = latents[:, :-1].reshape(-1, latents.shape[-1])
    future = latents[:, 1:].reshape(-1, latents.shape[-1])
    gram = past.T @ past + ridge * torch.eye(past.shape[1], dtype=past.dtype, device=past.device)
    return torch.linalg.solve(gram, past.T @ future)


def predictive_loss(latents: torch.Tensor, koopman: torch.Tensor) -> torch.Tensor:
    return ((latents[:, 1:] - latents[:, :-1] @ koopman) ** 2).mean()


def spectral_penalty(koopman: torch.Tensor, max_modulus: float = 1.0) -> torch.Tensor:
    """sum_i relu(|lambda_i| - max_modulus)^2 over the eigenvalues of A: zero iff every |lambda| <= max_modulus."""
    moduli = torch.linalg.eigvals(koopman).abs()
    return torch.relu(moduli - max_modulus).pow(2).sum()


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)), summed over the latent, per step."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


class KoopmanVae(Backbone):
    patterns = frozenset({"full"})

    def __init__(self, config: KvaeConfig):
        super().__init__()
        self.d_model, self.latent = config.d_model, config.latent
        self.encoder = nn.GRU(config.d_model, config.hidden, batch_first=True, bidirectional=True)
        self.posterior = nn.Linear(2 * config.hidden, 2 * config.latent)
        self.prior_cell = nn.GRUCell(config.latent, config.hidden)
        self.prior = nn.Linear(config.hidden, 2 * config.latent)
        self.decoder = nn.GRU(config.latent, config.d_model, batch_first=True)

    def encode(self, h: torch.Tensor):
        """Posterior mean and log-variance (B, T, k) of the embedded steps h (B, T, d)."""
        mu, logvar = self.posterior(self.encoder(h)[0]).chunk(2, dim=-1)
        return mu, logvar.clamp(-8, 8)

    def prior_rollout(self, batch: int, length: int, generator: torch.Generator | None = None):
        """Samples z_bar (B, T, k) of the GRU prior with their means and log-variances."""
        weight = self.prior.weight
        state = torch.zeros(batch, self.prior_cell.hidden_size, dtype=weight.dtype, device=weight.device)
        previous = torch.zeros(batch, self.latent, dtype=weight.dtype, device=weight.device)
        samples, means, logvars = [], [], []
        for _ in range(length):
            state = self.prior_cell(previous, state)
            mu, logvar = self.prior(state).chunk(2, dim=-1)
            logvar = logvar.clamp(-8, 8)
            noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
            previous = mu + (0.5 * logvar).exp() * noise
            samples.append(previous)
            means.append(mu)
            logvars.append(logvar)
        return torch.stack(samples, 1), torch.stack(means, 1), torch.stack(logvars, 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)[0]

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("kvae encodes the whole sequence (bidirectional posterior); it has no incremental state")
        return self.decode(self.encode(h)[0])

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("kvae encodes the whole sequence; generation rolls the prior out with the Koopman matrix")


class KvaeObjective(Objective):
    pattern = FULL

    def __init__(self, config: KvaeObjectiveConfig):
        super().__init__()
        self.config = config

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        tokens, _ = model.tokenizer.encode(batch["x"])
        h = model.head.embed(tokens)
        backbone = model.backbone
        mu_q, logvar_q = backbone.encode(h)
        z = mu_q + (0.5 * logvar_q).exp() * torch.randn_like(mu_q)
        reconstruction = ((model.head(backbone.decode(z)) - tokens.to(h.dtype)) ** 2).mean()
        prior_z, mu_p, logvar_p = backbone.prior_rollout(tokens.shape[0], tokens.shape[1])
        kl = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).mean()
        koopman = koopman_matrix(prior_z, self.config.ridge)
        prediction = predictive_loss(prior_z, koopman)
        spectral = spectral_penalty(koopman, self.config.max_modulus)
        c = self.config
        loss = reconstruction + c.beta * kl + c.alpha * prediction + c.gamma * spectral
        return {"loss": loss, "reconstruction": reconstruction.detach(), "kl": kl.detach(), "prediction": prediction.detach(),
                "spectral": spectral.detach()}

    @torch.no_grad()
    def generate(self, model, num_samples: int, length: int, generator: torch.Generator | None = None, reference: int = 256):
        """Sequences (n, length, V): z_bar_1 from the prior, then z_bar_{t+1} = z_bar_t A, decoded.

        A is fitted on ``reference`` prior roll-outs of the same length.
        """
        backbone = model.backbone
        koopman = koopman_matrix(backbone.prior_rollout(reference, length, generator)[0], self.config.ridge)
        first = backbone.prior_rollout(num_samples, 1, generator)[0][:, 0]
        steps = [first]
        for _ in range(length - 1):
            steps.append(steps[-1] @ koopman)
        return model.head(backbone.decode(torch.stack(steps, 1)))


def build(config: KvaeConfig, ctx) -> KoopmanVae:
    ctx.set("d_model", config.d_model)
    return KoopmanVae(config)


def build_objective(config: KvaeObjectiveConfig, ctx=None) -> KvaeObjective:
    return KvaeObjective(config)
