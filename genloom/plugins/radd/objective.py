"""RADD's training objective: a time-free denoising cross-entropy on masked positions.

The network sees only the noisy ids (no time input) and predicts ``p_theta(x0^i | x_t^UM)`` at
every masked position. The loss is the continuous-time ELBO of absorbing diffusion rewritten with
Theorem 1 as a weighted cross-entropy on masked positions (the paper's denoising cross-entropy):

- ``t-dce``: ``t ~ U(sampling_eps, 1)``, mask with probability ``1 - e^{-sigma_bar(t)}`` and weight
  each masked position by ``sigma(t) e^{-sigma_bar}/(1 - e^{-sigma_bar})`` (``1/t`` for the
  log-linear schedule);
- ``lambda-dce``: the change of variables ``lambda = 1 - e^{-sigma_bar}``: mask with probability
  ``lambda ~ U(sampling_eps, 1)`` and weight ``1/lambda``;
- ``any-order``: the any-order autoregressive form: mask exactly ``k ~ U{1..L}`` positions and
  weight by ``L/k`` (Sec. 4 of the paper: the bound equals an expected AO-ARM likelihood).

All three are unbiased estimates of the same negative log-likelihood bound (nats per token).
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import FULL
from genloom.plugins.radd import diffusion


def sample_times(batch_size: int, *, sampling_eps: float, antithetic: bool, generator=None, device=None) -> torch.Tensor:
    """Per-sequence times in [sampling_eps, 1); ``antithetic`` spreads them evenly (low-discrepancy)."""
    u = torch.rand(batch_size if not antithetic else 1, generator=generator, device=device)
    if antithetic:
        u = (u + torch.arange(batch_size, device=device) / batch_size) % 1.0
    return sampling_eps + (1.0 - sampling_eps) * u


def corrupt_batch(x0: torch.Tensor, *, loss_form: str, sampling_eps: float, noise_eps: float, antithetic: bool,
                  mask_id: int, maskable: torch.Tensor | None = None, generator=None):
    """Noisy ids, masked positions and per-sequence weight (B,) for one training batch."""
    batch, length = x0.shape
    device = x0.device
    if loss_form == "any-order":
        n = maskable.sum(-1) if maskable is not None else torch.full((batch,), length, device=device)
        u = torch.rand(batch, generator=generator, device=device)
        counts = (u * n).floor().long() + 1  # k ~ U{1..n}
        counts = torch.minimum(counts, n.clamp_min(1))
        noisy, masked = diffusion.mask_exactly(x0, counts, mask_id, generator=generator, maskable=maskable)
        return noisy, masked, n.clamp_min(1).float() / counts.float()
    t = sample_times(batch, sampling_eps=sampling_eps, antithetic=antithetic, generator=generator, device=device)
    if loss_form == "lambda-dce":
        mask_prob, weight = t, 1.0 / t
    else:  # t-dce with the log-linear schedule
        sigma_bar = diffusion.loglinear_sigma_bar(t, noise_eps)
        mask_prob = diffusion.mask_probability(sigma_bar)
        weight = diffusion.loglinear_sigma(t, noise_eps) * diffusion.score_scale(sigma_bar)
    noisy, masked = diffusion.corrupt(x0, mask_prob, mask_id, generator=generator, keep=None if maskable is None else ~maskable)
    return noisy, masked, weight


def weighted_dce(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, weight: torch.Tensor, mask_id: int,
                 tokens: torch.Tensor | None = None, token_nll=None) -> dict[str, torch.Tensor]:
    """The denoising cross-entropy: ``sum_i masked_i * weight * -log p(x0^i | x_t)`` per token.

    ``tokens`` (B,) is the number of scored tokens per sequence (the bound is reported per token);
    ``token_nll(outputs, targets) -> (B, L)`` is the head's per-token NLL (default: categorical
    cross-entropy). Unmasked positions are selected away, so they get exactly zero gradient.
    Returns the loss, the plain masked-token cross-entropy and the masked fraction.
    """
    clean = diffusion.clean_logits(logits, mask_id)
    if token_nll is None:
        nll = diffusion.masked_cross_entropy(clean, x0, masked)
    else:
        nll = token_nll(clean, x0)
        nll = torch.where(masked, nll, torch.zeros_like(nll))
    per_sequence = nll.sum(-1) * weight
    tokens = tokens if tokens is not None else torch.full_like(per_sequence, x0.shape[1])
    loss = (per_sequence / tokens.clamp_min(1)).mean()
    n_masked = masked.sum().clamp_min(1)
    return {
        "loss": loss,
        "bits_per_token": loss.detach() / diffusion.LOG2,
        "masked_ce": nll.detach().sum() / n_masked,
        "mask_fraction": masked.float().mean(),
        "_nats": per_sequence.detach().sum(),  # validation: val/loss = sum of the bound / sum of tokens
        "_tokens": tokens.sum(),
    }


class RADDObjective(Objective):
    """Masked (absorbing) diffusion with a time-free network and the 1/t-weighted ELBO."""

    pattern = FULL

    def __init__(self, config, mask_id: int):
        super().__init__()
        self.config = config
        self.mask_id = int(mask_id)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        x0 = batch["ids"]
        valid = batch.get("valid")
        scored = batch.get("mask")
        if valid is None and scored is not None and scored.shape[1] == x0.shape[1] - 1 and not bool(scored.all()):
            # token windows: ``mask`` marks real targets ids[1:]; padding is neither noised nor attended
            valid = torch.cat([torch.ones_like(scored[:, :1]), scored], 1).bool()
        maskable = valid
        prompt = batch.get("prompt_mask")
        if prompt is not None:  # conditional training: the prompt is never masked nor scored
            maskable = (~prompt) if maskable is None else (maskable & ~prompt)
        c = self.config
        noisy, masked, weight = corrupt_batch(
            x0, loss_form=c.loss_form, sampling_eps=c.sampling_eps, noise_eps=c.noise_eps,
            antithetic=c.antithetic, mask_id=self.mask_id, maskable=maskable,
        )
        logits = model(noisy, pattern=self.pattern, valid=valid)  # no time input: RADD's point
        tokens = maskable.sum(-1).float() if maskable is not None else None
        return weighted_dce(logits, x0, masked, weight, self.mask_id, tokens, getattr(model.head, "token_nll", None))


def build(config, ctx) -> RADDObjective:
    return RADDObjective(config, ctx.mask_id)
