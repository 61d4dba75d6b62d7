"""Gated LoRA: low-rank adapters that act only where a gate is on (the paper's mask positions).

``y = W x + b`` at ordinary positions and ``y = W x + b + (alpha / r) B A x`` at gated positions.
The ungated rows of the output are the base layer's own output values (the update is computed for
the gated rows only and added there with ``index_add``), so ordinary positions equal the base
model bit-for-bit, whatever the adapter weights.

The gate reaches the layers through a :class:`GateContext` shared by every adapter of one model:
whoever knows the token ids (the MTP head's ``embed``) :meth:`~GateContext.put`\\ s a (B, L)
boolean gate, and the gated backbone :meth:`~GateContext.take`\\ s it for the duration of one
forward. Any ``nn.Linear`` of any backbone can be adapted (:func:`add_gated_lora` walks
``named_modules``), so no backbone has to know about LoRA.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math

import torch
from torch import nn
from torch.nn import functional as F


class GateContext:
    """The current gate: a (B, L) boolean tensor (True where the adapters are active) or None."""

    def __init__(self):
        self.pending: torch.Tensor | None = None
        self.gate: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None

    def put(self, gate: torch.Tensor | None) -> None:
        """Hand the gate of the next backbone forward (called by the head when it embeds ids)."""
        self.pending = gate

    def take(self, shape) -> torch.Tensor | None:
        """The pending gate for hidden states of leading shape (B, L), consumed (None if no gate)."""
        gate, self.pending = self.pending, None
        if gate is None:
            return None
        if tuple(gate.shape) != tuple(shape):
            raise ValueError(f"gated LoRA: the gate has shape {tuple(gate.shape)} but the backbone got hidden states of shape {tuple(shape)}; "
                             "embed the ids with the MTP head right before the backbone forward")
        return gate

    @contextlib.contextmanager
    def active(self, gate: torch.Tensor | None):
        """Make ``gate`` the gate the adapters read inside the block."""
        old = self.gate, self.__dict__.get("_rows")
        self.gate, self._rows = gate, None
        try:
            yield
        finally:
            self.gate, self._rows = old

    def rows(self) -> torch.Tensor | None:
        """Indices of the gated positions in the flattened (B * L) gate (computed once per forward)."""
        if self.gate is None:
            return None
        if self.__dict__.get("_rows") is None:
            self._rows = self.gate.reshape(-1).nonzero().squeeze(1)
        return self._rows


class GatedLoRALinear(nn.Linear):
    """An ``nn.Linear`` that shares the base layer's weight and bias and adds a gated low-rank update.

    State-dict keys of the base layer (``weight``, ``bias``) are unchanged, so base checkpoints load
    into an adapted backbone; the adapter adds ``lora_a`` (r, in) and ``lora_b`` (out, r).
    ``lora_b`` starts at zero (the usual LoRA start: the adapted model begins as the base model).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, context: GateContext, *, name: str = ""):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.scaling = alpha / rank
        self.context = context
        self.adapter_name = name
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank update ``(alpha / r) B A x`` for rows ``x`` (N, in)."""
        return F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        gate = self.context.gate
        if gate is None:
            return out
        if x.shape[:-1].numel() == gate.numel() and (x.dim() == 2 or tuple(x.shape[:-1]) == tuple(gate.shape)):
            # fast path: rows of the flattened input line up with the flattened gate
            rows = self.context.rows()
            if rows.numel() == 0:
                return out
            flat_x, flat_out = x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])
            delta = self.lora_delta(flat_x.index_select(0, rows)).to(out.dtype)
            # index_add touches only the gated rows: every other element of ``out`` is the base layer's value
            return flat_out.index_add(0, rows, delta).reshape(out.shape)
        mask = _align(gate, x.shape[:-1], self.adapter_name)
        if not bool(mask.any()):
            return out
        return out.index_put((mask,), out[mask] + self.lora_delta(x[mask]).to(out.dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


def _align(gate: torch.Tensor, lead: torch.Size, name: str) -> torch.Tensor:
    """The gate laid out like the layer's input rows (same (B, L), or flattened to B*L rows)."""
    if tuple(gate.shape) == tuple(lead):
        return gate
    if len(lead) == 1 and lead[0] == gate.numel():
        return gate.reshape(-1)
    if len(lead) >= 2 and tuple(lead[:2]) == tuple(gate.shape):
        return gate.reshape(*gate.shape, *([1] * (len(lead) - 2))).expand(*lead)
    raise ValueError(f"gated LoRA layer '{name}' got inputs of leading shape {tuple(lead)}, which do not line up with the gate {tuple(gate.shape)}")


def add_gated_lora(module: nn.Module, *, rank: int, alpha: float, context: GateContext, targets: tuple[str, ...] = ()) -> list[str]:
    """Replace every ``nn.Linear`` of ``module`` (whose qualified name matches one of ``targets``
    as an fnmatch pattern; all when ``targets`` is empty) by a :class:`GatedLoRALinear`.

    Returns the qualified names of the adapted layers.
    """
    chosen = []
    for name, sub in list(module.named_modules()):
        if type(sub) is not nn.Linear or not name:  # exactly nn.Linear: never adapt an adapter twice
            continue
        if targets and not any(fnmatch.fnmatchcase(name, pattern) for pattern in targets):
            continue
        chosen.append(name)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, GatedLoRALinear(getattr(parent, child), rank, alpha, context, name=name))
    return chosen


def lora_parameters(module: nn.Module):
    """The adapter parameters (``lora_a``, ``lora_b``) of every gated layer in ``module``."""
    for sub in module.modules():
        if isinstance(sub, GatedLoRALinear):
            yield sub.lora_a
            yield sub.lora_b
