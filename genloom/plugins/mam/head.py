"""The MaM head: one network, two outputs over a partially observed state.

The state is the sequence with every unobserved position replaced by the ``mask`` id. From the
backbone's (full-attention) outputs the head gives

- the *marginal* ``log p_theta(x_S)``: mean-pooled hidden states through a small MLP, one scalar per
  state (:meth:`MamHead.marginal`), so any marginal costs one forward pass;
- the *conditionals* ``p_phi(x_i | x_S)``: logits over the vocabulary at every position (``forward``),
  an any-order autoregressive model used to train the marginals.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.toolkit.heads import TokenHead


class MamHead(TokenHead):
    def __init__(self, vocab_size: int, d_model: int, mask_id: int, init_std: float = 0.02):
        super().__init__(vocab_size, d_model, tie_weights=False, init_std=init_std)
        self.mask_id = mask_id
        self.marginal_mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(h)
        logits[..., self.mask_id] = float("-inf")  # the mask is an input symbol, never an output
        return logits

    def marginal(self, h: torch.Tensor) -> torch.Tensor:
        """(B,) log p_theta(x_S) of each state from its hidden states (B, N, D)."""
        return self.marginal_mlp(h.mean(1)).squeeze(-1)


def mam_head(model) -> MamHead:
    if not isinstance(model.head, MamHead):
        raise ConfigError(f"mam needs the 'mam' head (marginal and conditional outputs), got {type(model.head).__name__}", path="head")
    return model.head


def observe(ids: torch.Tensor, observed: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The state: ``ids`` where ``observed``, the mask id elsewhere."""
    return torch.where(observed, ids, torch.full_like(ids, mask_id))


def mam_pass(model, ids: torch.Tensor, observed: torch.Tensor, pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: (log p_theta(x_S) (B,), conditional log-probs log p_phi(. | x_S) (B, N, V))."""
    from genloom.core import kernels

    head = mam_head(model)
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        h = model.backbone(head.embed(observe(ids, observed, head.mask_id)), pattern=pattern)
    logits = head(h)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return head.marginal(h), logits.log_softmax(-1)


def marginal_log_prob(model, ids: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """(B,) log p(x_S) for any observed subsets S (B, N): one forward pass for the whole batch."""
    from genloom.core.pattern import FULL

    return mam_pass(model, ids, observed, FULL)[0]


def build(config, ctx):
    return MamHead(ctx.vocab_size, ctx.d_model, ctx.mask_id, config.init_std)
