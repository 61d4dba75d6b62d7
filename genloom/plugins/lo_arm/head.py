"""The LO-ARM head: token logits and order-policy logits from one pass over a masked state.

The generator reads a *state*: the sequence with every position not yet generated replaced by the
``mask`` id. From the backbone's (full-attention) outputs the head gives, per position, logits over
the vocabulary (the classifier ``p(x_i | state)``) and one order logit (the order policy
``p(z = i | state)``, a softmax over the positions still masked: :func:`order_log_probs`).
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError
from genloom.toolkit.heads import TokenHead, scalar_readout


class LoArmHead(TokenHead):
    def __init__(self, vocab_size: int, d_model: int, mask_id: int, tie_weights: bool = True, init_std: float = 0.02):
        super().__init__(vocab_size, d_model, tie_weights, init_std)
        self.mask_id = mask_id
        self.order_head = scalar_readout(d_model, init_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(h)
        logits[..., self.mask_id] = float("-inf")  # the mask is an input symbol, never an output
        return logits

    def order_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.order_head(h).squeeze(-1)


def wide(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def order_log_probs(logits: torch.Tensor, revealed: torch.Tensor) -> torch.Tensor:
    """(B, N) log-probabilities of choosing each position next: -inf at revealed positions (a
    position is generated once), a softmax over the others. A row with nothing left is all -inf."""
    masked = logits.masked_fill(revealed, float("-inf"))
    out = masked.log_softmax(-1)
    return torch.where(revealed.all(-1, keepdim=True), torch.full_like(out, float("-inf")), out)


def lo_arm_head(model) -> LoArmHead:
    if not isinstance(model.head, LoArmHead):
        raise ConfigError(f"lo-arm needs the 'lo-arm' head (token and order-policy logits), got {type(model.head).__name__}", path="head")
    return model.head


def generator_step(model, ids: torch.Tensor, revealed: torch.Tensor, pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the generator on the state (``ids`` where ``revealed``, mask elsewhere):
    (token log-probs (B, N, V), order log-probs (B, N))."""
    from genloom.core import kernels

    head = lo_arm_head(model)
    state = torch.where(revealed, ids, torch.full_like(ids, head.mask_id))
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        h = model.backbone(head.embed(state), pattern=pattern)
    return wide(head(h)).log_softmax(-1), order_log_probs(wide(head.order_logits(h)), revealed)


def build(config, ctx):
    return LoArmHead(ctx.vocab_size, ctx.d_model, ctx.mask_id, config.tie_weights, config.init_std)
