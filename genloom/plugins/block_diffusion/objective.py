"""The BD3-LM objective: per-block masked diffusion, vectorised over ``[x_t, x_0]`` (paper Alg. 1, Eq. 8).

For blocks ``x^1 .. x^B`` of ``block_size`` tokens, each block b draws its own time ``t_b`` and is
corrupted by the absorbing ("mask") process ``q(x_t^b | x^b)``: every token of the block becomes the
mask token with probability ``1 - alpha(t_b)``.  With the linear schedule ``alpha(t) = 1 - t``,

    NELBO = sum_b E_{t_b} E_q [ -alpha'(t_b) / (1 - alpha(t_b)) * sum_{l masked} -log p(x^{b,l} | x_t^b, x^{<b}) ]
          = sum_b E_{t_b} E_q [ (1 / t_b) * sum_{l masked} CE ],

with the SUBS parameterisation (the mask is never predicted; unmasked tokens are copied, so they
cost nothing).  The reported loss is the NELBO per (valid) token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genloom.plugins.block_diffusion.pattern import BlockDiffusionPattern


def block_index(length: int, block_size: int, device=None) -> torch.Tensor:
    return torch.div(torch.arange(length, device=device), block_size, rounding_mode="floor")


def subs_logits(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parameterisation: the denoiser never outputs the mask token."""
    logits = logits.clone()
    logits[..., mask_id] = float("-inf")
    return logits


class BlockDiffusionObjective(nn.Module):
    """Block diffusion (BD3-LM) training loss; see the module docstring for the equation."""

    def __init__(self, config, *, mask_id: int, seq_len: int | None = None):
        super().__init__()
        self.config = config
        self.block_size = config.block_size
        self.mask_id = int(mask_id)
        self.seq_len = seq_len

    # -- the pattern the backbone must serve -------------------------------------------------
    @property
    def pattern(self) -> BlockDiffusionPattern:
        return BlockDiffusionPattern(seq_len=self.seq_len or self.block_size, block_size=self.block_size)

    def pattern_for(self, seq_len: int) -> BlockDiffusionPattern:
        return BlockDiffusionPattern(seq_len=seq_len, block_size=self.block_size)

    # -- forward process ----------------------------------------------------------------------
    def sample_times(self, batch_size: int, num_blocks: int, *, device=None, generator=None) -> torch.Tensor:
        """Per-block times ``t_b`` (B, num_blocks), uniform on [mask_rate_min, mask_rate_max].

        With ``antithetic`` the B*num_blocks draws are stratified (low-discrepancy sampler, as in
        MDLM/BD3-LM) which lowers the variance of the batch loss without biasing it.
        """
        cfg = self.config
        n = batch_size * num_blocks
        if cfg.antithetic:
            u = torch.rand((), device=device, generator=generator)
            u = torch.remainder(u + torch.arange(n, device=device) / n, 1.0)
            u = u[torch.randperm(n, device=device, generator=generator)]
        else:
            u = torch.rand(n, device=device, generator=generator)
        t = cfg.mask_rate_min + (cfg.mask_rate_max - cfg.mask_rate_min) * u
        return t.clamp_min(cfg.min_time).view(batch_size, num_blocks)

    def corrupt(self, ids: torch.Tensor, *, generator=None):
        """Draw (x_t, masked, t_per_token) for clean ids (B, L)."""
        B, L = ids.shape
        blocks = block_index(L, self.block_size, ids.device)
        t_block = self.sample_times(B, int(blocks[-1]) + 1, device=ids.device, generator=generator)
        t_token = t_block[:, blocks]
        # linear schedule: P(masked at time t) = 1 - alpha(t) = t
        masked = torch.rand(ids.shape, device=ids.device, generator=generator) < t_token
        x_t = torch.where(masked, torch.full_like(ids, self.mask_id), ids)
        return x_t, masked, t_token

    # -- the vectorised pass ------------------------------------------------------------------
    def noisy_logits(self, model, x_t: torch.Tensor, x_0: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every noisy position in one pass over ``[x_t, x_0]`` (B, L, V)."""
        L = x_0.shape[1]
        full_valid = None if valid is None else torch.cat([valid, valid], dim=1)
        logits = model(torch.cat([x_t, x_0], dim=1), pattern=self.pattern_for(L), valid=full_valid)
        return logits[:, :L]

    def weighted_loss(self, logits, x_0, masked, t_token, valid=None):
        """Per-token NELBO terms (B, L): (1/t) * CE on masked tokens, 0 elsewhere (Eq. 8, linear schedule)."""
        logits = subs_logits(logits.float(), self.mask_id)
        ce = F.cross_entropy(logits.transpose(1, 2), x_0, reduction="none")
        # -alpha'(t) / (1 - alpha(t)) = 1 / t for alpha(t) = 1 - t
        weight = 1.0 / t_token
        term = torch.where(masked, weight * ce, torch.zeros_like(ce))
        if valid is not None:
            term = term * valid
        return term, ce

    def loss_given_noise(self, model, ids, masked, t_token, valid=None):
        x_t = torch.where(masked, torch.full_like(ids, self.mask_id), ids)
        logits = self.noisy_logits(model, x_t, ids, valid)
        term, ce = self.weighted_loss(logits, ids, masked, t_token, valid)
        count = ids.numel() if valid is None else valid.sum().clamp_min(1)
        scored = masked if valid is None else masked & valid.bool()
        n_masked = scored.sum()
        return dict(
            loss=term.sum() / count,
            masked_ce=(ce * scored).sum() / n_masked.clamp_min(1),
            mask_rate=n_masked / count,
        )

    def loss(self, model, batch, *, generator=None):
        ids = batch["ids"] if isinstance(batch, dict) else batch
        valid = batch.get("valid") if isinstance(batch, dict) else None
        if valid is not None:
            valid = valid.bool()
        _, masked, t_token = self.corrupt(ids, generator=generator)
        return self.loss_given_noise(model, ids, masked, t_token, valid)


# -- the paper's naive loop, used as the reference for the vectorised pass ---------------------------

def looped_noisy_logits(model, x_t: torch.Tensor, x_0: torch.Tensor, block_size: int, *, init_state, rewind) -> torch.Tensor:
    """Logits of every noisy block computed block by block with a KV cache of clean blocks (Alg. 1, loop form).

    For block b: run the noisy block x_t^b against the cache holding x_0^{<b} (bidirectional inside
    the block), rewind the cache, then append the clean block x_0^b to it.
    """
    from genloom.core.pattern import block_causal

    B, L = x_0.shape
    state = init_state(B, L + block_size)
    pattern = block_causal(block_size)
    out = []
    for start in range(0, L, block_size):
        stop = min(start + block_size, L)
        out.append(model(x_t[:, start:stop], pattern=pattern, state=state))
        rewind(state, start)
        model(x_0[:, start:stop], pattern=pattern, state=state)
    return torch.cat(out, dim=1)
