"""The ILM head: one joint distribution over (slot, token) insertions and a stop action.

Layout of one pass: ``[prefix | canvas | padding]`` under full attention, where the prefix is the
source block (or a plain sequence's first token) and the canvas the tokens inserted so far. Slot k
of the canvas (the gap before canvas token k; slot n is the end) is read from the hidden state of
layout position ``P - 1 + k``: the last prefix token stands for the first slot, each canvas token
for the slot after it. The stop logit is read from the last prefix position. All slot-token
logits and the stop logit share one softmax (:func:`joint_log_probs`); slots past a row's canvas
and the end-of-sequence id (which the stop action replaces) get probability 0.
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError
from genloom.toolkit.heads import TokenHead, scalar_readout
from genloom.toolkit.anyorder import slot_states


class IlmHead(TokenHead):
    def __init__(self, vocab_size: int, d_model: int, eos_id: int | None, tie_weights: bool = True, init_std: float = 0.02):
        super().__init__(vocab_size, d_model, tie_weights, init_std)
        self.eos_id = eos_id
        self.stop_head = scalar_readout(d_model, init_std)


def ilm_head(model) -> IlmHead:
    if not isinstance(model.head, IlmHead):
        raise ConfigError(f"ilm needs the 'ilm' head (insertion and stop logits), got {type(model.head).__name__}", path="head")
    return model.head


def joint_log_probs(model, prefix: torch.Tensor, canvases: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B, G * V + 1) log-probabilities of every (slot, token) insertion, flattened slot-major, then stop; G = n_max + 1."""
    head = ilm_head(model)
    slots = slot_states(model, prefix, canvases, pad_id)  # (B, G, D)
    logits = head(slots)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    lengths = torch.tensor([len(c) for c in canvases], device=slots.device)
    open_slot = torch.arange(slots.shape[1], device=slots.device)[None] <= lengths[:, None]
    logits = logits.masked_fill(~open_slot[:, :, None], float("-inf"))
    if head.eos_id is not None:
        logits[..., head.eos_id] = float("-inf")
    stop = head.stop_head(slots[:, 0]).to(logits.dtype)  # read at the last prefix position
    return torch.cat([logits.flatten(1), stop], 1).log_softmax(-1)


def build(config, ctx):
    return IlmHead(ctx.vocab_size, ctx.d_model, ctx.get("eos_id"), config.tie_weights, config.init_std)
