"""The sigma-GPT head and the forward pass in an arbitrary order.

``SigmaHead`` embeds a token with two positional encodings, the position of the token itself
(*current*) and the position whose token the model is asked for next (*next*):
``e(x) + E_cur[current] + E_next[next]`` (``genloom.toolkit.anyorder.DoublePositionalEncoding``).
``embed(ids)`` is the left-to-right case (current ``t``, next ``t + 1``), the path the core takes
when it runs a whole sequence; :func:`ordered_logits` runs a sequence in any order.
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError
from genloom.toolkit.heads import TokenHead
from genloom.toolkit.anyorder import DoublePositionalEncoding, double_positions, permute


class SigmaHead(TokenHead):
    def __init__(self, vocab_size: int, d_model: int, max_positions: int, tie_weights: bool = True, init_std: float = 0.02):
        super().__init__(vocab_size, d_model, tie_weights, init_std)
        self.positions = DoublePositionalEncoding(max_positions, d_model, init_std)

    def embed_ordered(self, ids: torch.Tensor, current: torch.Tensor, next: torch.Tensor) -> torch.Tensor:
        """(B, L, D) for layout tokens ``ids`` (B, L) at positions ``current`` that predict positions ``next``."""
        return self.embed_tokens(ids) + self.positions(current, next)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Left to right: token t sits at position t and predicts position t + 1 (whole sequences only)."""
        B, L = ids.shape
        t = torch.arange(L, device=ids.device).expand(B, L)
        return self.embed_ordered(ids, t, t + 1)



def sigma_head(model) -> SigmaHead:
    if not isinstance(model.head, SigmaHead):
        raise ConfigError(f"sigma-gpt needs the 'sigma-gpt' head (double positional encoding), got {type(model.head).__name__}", path="head")
    return model.head


def hidden_ordered(model, layout: torch.Tensor, current: torch.Tensor, next: torch.Tensor, *, pattern, state=None) -> torch.Tensor:
    """Backbone outputs for layout tokens with explicit (current, next) positions; ``state`` continues a cache."""
    from genloom.core import kernels

    e = sigma_head(model).embed_ordered(layout, current, next)
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        return model.backbone(e, pattern=pattern, state=state)


def ordered_logits(model, ids: torch.Tensor, order: torch.Tensor, *, pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced pass of ``ids`` (B, N, in position order) read in ``order`` (B, N).

    Returns (logits (B, N-1, V), targets (B, N-1)): step t reads the tokens of positions
    ``order[:t+1]`` and its logits are the distribution of position ``order[t+1]``, whose token is
    ``targets[:, t]``. The attention is causal in the layout (``pattern`` may add a bidirectional
    prefix that stays in place, e.g. a source block).
    """
    layout = permute(ids, order)
    current, nxt = double_positions(order)
    h = hidden_ordered(model, layout[:, :-1], current, nxt, pattern=pattern)
    return model.head(h), layout[:, 1:]


def build(config, ctx):
    return SigmaHead(ctx.vocab_size, ctx.d_model, config.max_positions, config.tie_weights, config.init_std)
