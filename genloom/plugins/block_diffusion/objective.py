"""The BD3-LM objective: per-block masked diffusion, vectorised over ``[x_t, x_0]`` (the paper's NELBO and vectorised training).

For blocks ``x^1 .. x^B`` of ``block_size`` tokens, each block b draws its own time ``t_b`` and is
corrupted by the absorbing ("mask") process ``q(x_t^b | x^b)``: every token of the block becomes the
mask token with probability ``1 - alpha(t_b)``.  With the linear schedule ``alpha(t) = 1 - t``,

    NELBO = sum_b E_{t_b} E_q [ -alpha'(t_b) / (1 - alpha(t_b)) * sum_{l masked} -log p(x^{b,l} | x_t^b, x^{<b}) ]
          = sum_b E_{t_b} E_q [ (1 / t_b) * sum_{l masked} CE ],

with the SUBS parameterisation (the mask is never predicted; unmasked tokens are copied, so they
cost nothing).  The reported loss is the NELBO per (valid) token (an upper bound on the NLL per
token in expectation over the noise when times cover [0, 1]); validation sums ``_nats`` and
``_tokens``/``_bytes`` so ``val/bits_per_byte`` is the NELBO in bits per byte.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genloom.core.model import Objective
from genloom.core.pattern import block_causal
from genloom.plugins.block_diffusion.pattern import BlockDiffusionPattern


def block_index(length: int, block_size: int, device=None) -> torch.Tensor:
    return torch.div(torch.arange(length, device=device), block_size, rounding_mode="floor")


def subs_logits(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parameterisation: the denoiser never outputs the mask token."""
    logits = logits.clone()
    logits[..., mask_id] = float("-inf")
    return logits


class BlockDiffusionObjective(Objective):
    """Block diffusion (BD3-LM) training loss; see the module docstring for the equation.

    Batch: ``ids`` (B, L) with optional ``valid`` (B, L), or next-token windows (``ids`` of
    ``seq_len + 1`` with ``mask`` (B, seq_len)), of which the targets ``ids[:, 1:]`` are scored (see
    :meth:`clean_batch`). ``pattern`` is the 2L training pattern (what assembly checks the backbone
    against); the decoder passes its own ``block_causal`` pattern explicitly.
    """

    def __init__(self, config, *, mask_id: int, seq_len: int | None = None):
        super().__init__()
        self.config = config
        self.block_size = config.block_size
        self.mask_id = int(mask_id)
        self.seq_len = seq_len
        # the pattern the backbone must serve (assembly checks it); the loss builds it for the batch's length
        self.pattern = BlockDiffusionPattern(seq_len=seq_len or self.block_size, block_size=self.block_size)

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
    def noisy_logits(self, model, x_t: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
        """Logits for every noisy position in one pass over ``[x_t, x_0]`` (B, L, V).

        No ``valid`` goes to the model: the transformer derives mask positions from it, which would
        scramble the 2L layout. Padding (right-aligned, eval tails only) is therefore visible as keys
        inside the last, partial block; it is never scored.
        """
        L = x_0.shape[1]
        logits = model(torch.cat([x_t, x_0], dim=1), pattern=self.pattern_for(L))
        return logits[:, :L]

    def weighted_loss(self, logits, x_0, masked, t_token, valid=None, head=None):
        """Per-token NELBO terms (B, L): (1/t) * CE on masked tokens, 0 elsewhere (linear schedule).

        The cross-entropy comes from the head's ``token_nll`` (heads own their distribution), on the
        SUBS logits.
        """
        logits = subs_logits(logits.float(), self.mask_id)
        if head is not None and hasattr(head, "token_nll"):
            ce = head.token_nll(logits, x_0)
        else:
            ce = F.cross_entropy(logits.transpose(1, 2), x_0, reduction="none")
        # -alpha'(t) / (1 - alpha(t)) = 1 / t for alpha(t) = 1 - t
        weight = 1.0 / t_token
        term = torch.where(masked, weight * ce, torch.zeros_like(ce))
        if valid is not None:
            term = term * valid
        return term, ce

    def loss_given_noise(self, model, ids, masked, t_token, valid=None):
        x_t = torch.where(masked, torch.full_like(ids, self.mask_id), ids)
        logits = self.noisy_logits(model, x_t, ids)
        term, ce = self.weighted_loss(logits, ids, masked, t_token, valid, head=getattr(model, "head", None))
        count = torch.tensor(float(ids.numel()), device=ids.device) if valid is None else valid.sum().clamp_min(1).float()
        scored = masked if valid is None else masked & valid.bool()
        n_masked = scored.sum()
        nats = term.sum()
        return dict(
            loss=nats / count,
            masked_ce=(ce * scored).sum() / n_masked.clamp_min(1),
            mask_rate=n_masked / count,
            _nats=nats.detach(),
            _tokens=count.detach(),
        )

    def clean_batch(self, batch):
        """(ids (B, L), valid (B, L) or None) from a batch dict or an id tensor.

        Next-token windows carry ``seq_len + 1`` ids and a ``mask`` (B, seq_len) over ``ids[:, 1:]``;
        the objective scores exactly those targets (``ids[:, 1:]`` with ``valid = mask``), so summed
        nats and the batch's ``target_bytes`` describe the same tokens.
        """
        if not isinstance(batch, dict):
            return batch, None
        ids = batch["ids"]
        valid = batch.get("valid")
        mask = batch.get("mask")
        if valid is None and mask is not None and mask.shape[1] == ids.shape[1] - 1:
            ids, valid = ids[:, 1:], mask
        elif valid is None and self.seq_len and ids.shape[1] == self.seq_len + 1:
            ids = ids[:, 1:]
        if valid is not None:
            valid = valid.bool()
            if bool(valid.all()):
                valid = None
        return ids, valid

    def loss(self, model, batch, *, generator=None):
        ids, valid = self.clean_batch(batch)
        _, masked, t_token = self.corrupt(ids, generator=generator)
        out = self.loss_given_noise(model, ids, masked, t_token, valid)
        if isinstance(batch, dict) and "target_bytes" in batch:
            out["_bytes"] = batch["target_bytes"].sum().clamp_min(1.0).detach()
            out["bits_per_byte"] = out["_nats"] / math.log(2) / out["_bytes"]
        return out



# -- the paper's naive loop, used as the reference for the vectorised pass ---------------------------

def looped_noisy_logits(model, x_t: torch.Tensor, x_0: torch.Tensor, block_size: int) -> torch.Tensor:
    """Logits of every noisy block computed block by block with a KV cache of clean blocks (the paper's naive loop).

    For block b: run the noisy block x_t^b against the cache holding x_0^{<b} (bidirectional inside
    the block), roll the cache back, then append the clean block x_0^b to it. This is the paper's
    naive training loop; :meth:`BlockDiffusionObjective.noisy_logits` must equal it.
    """
    B, L = x_0.shape
    state = model.init_state(B, L + block_size)
    pattern = block_causal(block_size)
    out = []
    for start in range(0, L, block_size):
        stop = min(start + block_size, L)
        out.append(model(x_t[:, start:stop], pattern=pattern, state=state))
        state.rollback(start)
        model(x_0[:, start:stop], pattern=pattern, state=state)
    return torch.cat(out, dim=1)


def build(config, ctx):
    mask_id = ctx.get("mask_id")
    if mask_id is None:
        mask_id = ctx.add_special_token("mask")
    return BlockDiffusionObjective(config, mask_id=mask_id, seq_len=ctx.get("seq_len"))
