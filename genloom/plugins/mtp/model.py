"""The MTP head (mask embedding + sampler) and the gated-LoRA backbone wrapper.

Both wrap a base component built through the registry (``ctx.build``), so any head that embeds
ids and projects hidden states, and any backbone made of ``nn.Linear`` layers, can be extended.
They share one :class:`~genloom.plugins.mtp.lora.GateContext` through the build context: the head's
``embed`` puts the gate ``ids == mask_id``, the backbone's forward takes it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from genloom.core.model import Backbone, Head
from genloom.core.pattern import CAUSAL
from genloom.plugins.mtp.lora import GateContext, GatedLoRALinear, add_gated_lora

GATE_KEY = "mtp_gate_context"
log = logging.getLogger("genloom.plugins.mtp")


def gate_context(ctx) -> GateContext:
    """The model's one gate context (created by whichever of head/backbone is built first)."""
    gate = ctx.get(GATE_KEY)
    if gate is None:
        gate = GateContext()
        ctx.set(GATE_KEY, gate)
    return gate


def _node(node) -> dict:
    return {"name": node} if isinstance(node, str) else dict(node)


class GatedLoRABackbone(Backbone):
    """A registry backbone whose ``nn.Linear`` layers carry gated LoRA adapters (active at mask positions only)."""

    def __init__(self, base: nn.Module, *, rank: int, alpha: float, targets, gate: GateContext, train_base: bool):
        super().__init__()
        self.base = base
        self.gate = gate
        self.patterns = frozenset(getattr(base, "patterns", {"causal"}))
        if not train_base:
            for p in base.parameters():
                p.requires_grad_(False)
        self.adapted = add_gated_lora(base, rank=rank, alpha=alpha, context=gate, targets=tuple(targets))
        if not self.adapted:
            raise ValueError(f"gated LoRA: no nn.Linear of the base backbone matches targets {list(targets)}")

    def forward(self, h, *, pattern=CAUSAL, state=None, valid=None):
        gate = self.gate.take(h.shape[:2])
        with self.gate.active(gate):
            return self.base(h, pattern=pattern, state=state, valid=valid)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        return self.base.init_state(batch_size, capacity, device=device, dtype=dtype)

    def supports(self, pattern) -> bool:
        return self.base.supports(pattern) if hasattr(self.base, "supports") else super().supports(pattern)

    def adapters(self):
        return [m for m in self.base.modules() if isinstance(m, GatedLoRALinear)]


class Sampler(nn.Module):
    """The paper's lightweight sampler: a 2-layer MLP on [hidden at a mask position ; embedding of the
    token chosen just before it], added to the hidden state and read out by the base head's projection."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, hidden), nn.SiLU(), nn.Linear(hidden, d_model))
        nn.init.zeros_(self.mlp[-1].weight)  # starts as the plain projection of the mask hidden state
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(torch.cat([h, previous.to(h.dtype)], dim=-1))


class MTPHead(Head):
    """A base head plus a learned mask embedding and the sampler for the mask positions.

    ``forward`` is the base head's (at mask positions it gives the raw multi-token prediction);
    :meth:`sampler_logits` and :meth:`draft` give the sampler's predictions.
    """

    def __init__(self, base: Head, *, mask_id: int, d_model: int, sampler_hidden: int, gate: GateContext, train_base: bool):
        super().__init__()
        self.base = base
        self.mask_id = mask_id
        self.gate = gate
        if not train_base:
            for p in base.parameters():
                p.requires_grad_(False)
        self.mask_embedding = nn.Parameter(torch.zeros(d_model))  # added to the base embedding of <mask>
        self.sampler = Sampler(d_model, sampler_hidden)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        is_mask = ids == self.mask_id
        h = self.base.embed(ids)
        self.gate.put(is_mask)
        if not bool(is_mask.any()):
            return h
        return torch.where(is_mask[..., None], h + self.mask_embedding.to(h.dtype), h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base(h)

    def loss(self, outputs, targets, mask=None):
        return self.base.loss(outputs, targets, mask)

    def sample(self, logits, generator=None):
        return self.base.sample(logits, generator)

    def sampler_logits(self, h: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Logits at mask positions ``h`` (..., D) given the token ids chosen just before each (...)."""
        return self.base(self.sampler(h, self.base.embed(previous)))

    @torch.no_grad()
    def draft(self, h_masks: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Greedy drafts (B, m) from the m mask hidden states (B, m, D); ``first`` (B,) is the token
        the model chose for the position before the first mask (the sampler chains through them)."""
        previous, out = first, []
        for i in range(h_masks.shape[1]):
            previous = self.sampler_logits(h_masks[:, i : i + 1], previous[:, None])[:, 0].argmax(-1)
            out.append(previous)
        return torch.stack(out, 1) if out else first.new_zeros(first.shape[0], 0)


def copy_base_weights(module: nn.Module, source: dict, what: str) -> None:
    """Copy a trained base component's ``state_dict`` into ``module``; a vocabulary-sized first
    dimension may have grown (the <mask> token was added after the base was trained)."""
    own = module.state_dict()
    missing = [k for k in own if k not in source]
    unexpected = [k for k in source if k not in own]
    if missing or unexpected:
        raise ValueError(f"init_from: the {what} weights do not match the configured base {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for key, value in source.items():
            target = own[key]
            if target.shape == value.shape:
                target.copy_(value)
            elif target.dim() == value.dim() and target.shape[1:] == value.shape[1:] and target.shape[0] > value.shape[0]:
                target[: value.shape[0]].copy_(value)  # rows past the base vocabulary keep their init
            else:
                raise ValueError(f"init_from: {what} parameter '{key}' has shape {tuple(value.shape)} in the base run, {tuple(target.shape)} here")


def _init_from(ctx, path: str | None, part: str, module: nn.Module) -> None:
    """Initialise ``module`` from the ``part`` (backbone/head) of the genloom run at ``path``."""
    if not path:
        return
    from pathlib import Path

    if not Path(path).expanduser().exists():
        # a trained mtp run is restored from its own weights, which replace these anyway
        log.warning("init_from: '%s' does not exist; the base %s keeps its initial weights "
                    "(expected only when restoring a trained run whose base run was removed)", path, part)
        return
    key = f"mtp_init_from:{path}"
    source = ctx.get(key)
    if source is None:
        from genloom.core.generation import load_model

        source = load_model(path)
        ctx.set(key, source)
    copy_base_weights(module, getattr(source, part).state_dict(), part)


def build_backbone(config, ctx) -> GatedLoRABackbone:
    base = ctx.build("backbone", _node(config.base), path="backbone.base")
    _init_from(ctx, config.init_from, "backbone", base)
    return GatedLoRABackbone(base, rank=config.rank, alpha=config.alpha, targets=config.targets, gate=gate_context(ctx), train_base=config.train_base)


def build_head(config, ctx) -> MTPHead:
    base = ctx.build("head", _node(config.base), path="head.base")
    _init_from(ctx, config.init_from, "head", base)
    d_model = int(ctx.d_model)
    return MTPHead(base, mask_id=int(ctx.mask_id), d_model=d_model, sampler_hidden=config.sampler_hidden or 2 * d_model,
                   gate=gate_context(ctx), train_base=config.train_base)
