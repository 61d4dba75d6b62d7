"""Building blocks of recurrent backbones: a replayable recurrent state and a decoding check.

:class:`RecurrentState` implements the core's incremental :class:`~genloom.core.state.State` for
any backbone whose layers carry a fixed-size state (a linear-recurrence matrix, SSM modes, an EMA
vector...) that can be recomputed from the state *before* an advance and what the advance fed in.
A backbone's forward over new tokens does::

    steps = state.begin(valid, batch, length)          # (B, L) bool: the real tokens of the advance
    for i, layer in enumerate(layers):
        before = state.layers[i]                        # dict of batch-first tensors
        ... compute, with padded steps (steps == False) leaving the layer's state unchanged ...
        state.commit(i, new_state, record)              # record: what replay needs (batch-first tensors)

and gives ``replay(i, before, record, keep) -> state`` when it builds the state: the layer's state
after feeding, from ``before``, only the steps where ``keep`` (B, L) is True. Rollback to any point
inside the most recent advance is then one replay per layer (no projections recomputed: the
record holds the layer's own recurrence inputs). Layers must *replace* their state tensors, never
write into them, so snapshots are cheap shallow copies.

:func:`greedy_matches_recomputation` checks a built model end to end: the core's decoding loop,
with the state and left-padded prompts of different lengths, gives the same greedy tokens as
re-running the whole sequence at every step.

:class:`RecurrentBackbone` is the stack around such layers (causal only, final LayerNorm, the
state's step mask threaded through every layer, replay delegated to the layers), and
:class:`PreNormResidualBlock` the usual ``h + mixer(LN(h))``, ``h + FFN(LN(h))`` block around a
recurrent token mixer.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import State, as_lengths

Replay = Callable[[int, dict, dict, torch.Tensor], dict]


def _select(value, index):
    if torch.is_tensor(value):
        return value.index_select(0, index)
    if isinstance(value, dict):
        return {k: _select(v, index) for k, v in value.items()}
    if isinstance(value, list):
        return [_select(v, index) for v in value]
    return value


def _stack(mine, theirs):
    """``mine`` with ``theirs``'s batch rows appended (tensors, nested in dicts and lists)."""
    if torch.is_tensor(mine):
        return torch.cat([mine, theirs.to(mine.dtype)])
    if isinstance(mine, dict):
        return {k: _stack(v, theirs[k]) for k, v in mine.items()}
    if isinstance(mine, list):
        return [_stack(a, b) for a, b in zip(mine, theirs)]
    return mine


def rollback_within_advance(lengths: torch.Tensor, current: torch.Tensor, before: torch.Tensor | None, what: str) -> bool:
    """Check a rollback of a state that returns only inside its most recent advance: ``lengths``
    (B,) asked for, ``current`` held, ``before`` held before the advance (None: no advance yet).
    Raises ``ValueError`` (naming ``what``) for a roll forward or a target before the advance;
    returns False when nothing is to be done (``lengths == current``)."""
    if bool((lengths > current).any()):
        raise ValueError(f"cannot roll forward: asked for lengths {lengths.tolist()} but the state holds {current.tolist()}")
    if bool((lengths == current).all()):
        return False
    if before is None or bool((lengths < before).any()):
        floor = before.tolist() if before is not None else current.tolist()
        raise ValueError(
            f"{what} rolls back only within its most recent advance (to lengths >= {floor}), asked for {lengths.tolist()}; "
            "take a snapshot() before advancing to go further back"
        )
    return True


class RecurrentState(State):
    """Per-layer fixed-size states (dicts of batch-first tensors) with replay-based rollback.

    ``layers[i]`` is layer i's current state; ``lengths`` counts real tokens per sequence. The
    most recent advance is kept (each layer's state before it, its record, the step mask) so that
    :meth:`rollback` can return anywhere inside it; further back raises ``ValueError`` (take a
    :meth:`snapshot` first).
    """

    rollback_any = False

    def __init__(self, layers: list[dict[str, torch.Tensor]], replay: Replay, batch_size: int, device=None):
        self.layers = layers
        self.batch_size = batch_size
        self._replay = replay
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._before: list[dict] | None = None
        self._records: list[dict | None] | None = None
        self._steps: torch.Tensor | None = None
        self._lengths_before: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths

    @property
    def device(self):
        return self._lengths.device

    def begin(self, valid: torch.Tensor | None, length: int) -> torch.Tensor:
        """Start an advance of ``length`` steps; returns the (B, L) mask of real steps."""
        steps = torch.ones(self.batch_size, length, dtype=torch.bool, device=self.device) if valid is None else valid.to(self.device, torch.bool)
        self._lengths_before = self._lengths
        self._lengths = self._lengths + steps.sum(1)
        self._before = [dict(layer) for layer in self.layers]
        self._records = [None] * len(self.layers)
        self._steps = steps
        return steps

    def commit(self, index: int, new_state: dict, record: dict) -> None:
        """Layer ``index`` finished the advance: its new state and what replay needs."""
        self.layers[index] = new_state
        self._records[index] = record

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.device)
        self.layers = _select(self.layers, index)
        self._lengths = self._lengths.index_select(0, index)
        if self._steps is not None:
            self._before = _select(self._before, index)
            self._records = _select(self._records, index)
            self._steps = self._steps.index_select(0, index)
            self._lengths_before = self._lengths_before.index_select(0, index)
        self.batch_size = int(index.numel())

    def rollback(self, lengths) -> None:
        lengths = as_lengths(lengths, self.batch_size, self.device)
        if not rollback_within_advance(lengths, self._lengths, self._lengths_before, "a recurrent state"):
            return
        kept = lengths - self._lengths_before
        keep = self._steps & (self._steps.long().cumsum(1) <= kept[:, None])
        self.layers = [self._replay(i, self._before[i], self._records[i], keep) for i in range(len(self.layers))]
        self._lengths = lengths.clone()

    def extend(self, other: State) -> None:
        """Append ``other``'s rows (the core contract's ``State.extend``): each layer's state tensors
        stack along the batch; the last advance is forgotten (no rollback into it)."""
        if type(other) is not type(self) or len(other.layers) != len(self.layers):
            raise NotImplementedError(f"a {type(self).__name__} extends only by another of as many layers (got {type(other).__name__})")
        self.layers = _stack(self.layers, other.layers)
        self._lengths = torch.cat([self._lengths, other._lengths])
        self._before = self._records = self._steps = self._lengths_before = None
        self.batch_size = int(self._lengths.numel())

    def snapshot(self):
        return ([dict(layer) for layer in self.layers], self._lengths, self._before, self._records, self._steps, self._lengths_before, self.batch_size)

    def restore(self, snap) -> None:
        layers, self._lengths, self._before, self._records, self._steps, self._lengths_before, self.batch_size = snap
        self.layers = [dict(layer) for layer in layers]


def replay_linear_recurrence(before: torch.Tensor, record: dict, keep: torch.Tensor) -> torch.Tensor:
    """The ``linear_recurrence`` state after feeding, from ``before``, only the steps where ``keep``
    (B, L) is True; ``record`` holds the advance's ``k``, ``v`` and log transitions ``g``
    (B, H, L, .). Dropped steps become identity steps (g = 0, k = 0)."""
    mask = keep[:, None, :, None]
    g = torch.where(mask, record["g"], torch.zeros_like(record["g"]))
    k = torch.where(mask, record["k"], torch.zeros_like(record["k"]))
    _, final = kernels.call("linear_recurrence", k, k, record["v"], g, initial_state=before)
    return final


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """complex128 for float64 models, complex64 otherwise (complex recurrent states)."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class PreNormResidualBlock(nn.Module):
    """``h + mixer(LN(h))`` then ``h + FFN(LN(h))`` (GELU FFN of width ``ffn_mult * d_model``).

    ``mixer(x, **kw)`` is a token mixer called with the block's keyword arguments (``state=``,
    ``steps=``...), with a ``replay(before, record, keep)`` method when it keeps a recurrent state;
    it is registered under ``mixer_name`` (the name its parameters carry)."""

    def __init__(self, d_model: int, ffn_mult: int, eps: float, mixer: nn.Module, mixer_name: str = "mixer"):
        super().__init__()
        self.mixer_name = mixer_name
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.add_module(mixer_name, mixer)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Linear(ffn_mult * d_model, d_model))

    def forward(self, h, **kw):
        h = h + getattr(self, self.mixer_name)(self.norm1(h), **kw)
        return h + self.ffn(self.norm2(h))

    def replay(self, before: dict, record: dict, keep: torch.Tensor) -> dict:
        return getattr(self, self.mixer_name).replay(before, record, keep)


class RecurrentBackbone(Backbone):
    """A stack of recurrent layers and a final LayerNorm on ``cfg.d_model`` (``cfg.norm_eps``);
    causal pattern only.

    Each layer is called as ``layer(h, state=, steps=)``, where ``steps`` (B, L) marks the real
    tokens (None when all are real and no state is given) and ``state`` is the
    :class:`RecurrentState`; each layer has ``replay(before, record, keep)``. Subclasses set
    ``name`` and ``causal_reason`` (for the error on other patterns) and implement
    :meth:`layer_state` (one layer's fresh state)."""

    patterns = frozenset({"causal"})
    name = "recurrent"
    causal_reason = "a recurrence cannot look ahead"

    def __init__(self, cfg, layers):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state: RecurrentState | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the {self.name} backbone serves only the causal pattern ({self.causal_reason}), got '{pattern.kind}'")
        steps = None
        if valid is not None and not bool(valid.all()):
            steps = valid.to(device=h.device, dtype=torch.bool)  # padded steps: identity steps of the recurrence
        if state is not None:
            steps = state.begin(valid, h.shape[1])
        for layer in self.layers:
            h = layer(h, state=state, steps=steps)
        return self.norm(h)

    def layer_state(self, batch_size: int, device, dtype) -> dict[str, torch.Tensor]:
        """One layer's fresh state (``dtype``: the model's real dtype)."""
        raise NotImplementedError

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> RecurrentState:
        """A fresh state (:meth:`layer_state` per layer); ``capacity`` is ignored (the state does
        not grow with length)."""
        param = next(self.parameters())
        device = device if device is not None else param.device
        dtype = dtype if dtype is not None else param.dtype
        layers = [self.layer_state(batch_size, device, dtype) for _ in self.layers]
        return RecurrentState(layers, self._replay, batch_size, device=device)

    def _replay(self, index, before, record, keep):
        return self.layers[index].replay(before, record, keep)


def greedy_matches_recomputation(built, prompts, max_new_tokens: int = 6) -> list[list[int]]:
    """On an assembled model (``genloom.testing.tiny_model``), run the core's greedy decoding loop
    with the backbone's state and assert it gives the same tokens as re-running the full sequence
    at every step. Returns the generated ids."""
    from genloom.core.generation import model_device, run

    model = built.model.eval()
    decoder = built.ctx.build("decoder", {"name": "greedy"}, path="decoder")
    result = run(model, [list(p) for p in prompts], decoder, max_new_tokens=max_new_tokens, seed=0)
    with torch.no_grad():
        for prompt, generated in zip(prompts, result.ids):
            seq = list(prompt)
            for _ in range(len(generated)):
                seq.append(int(model(torch.tensor([seq], device=model_device(model)))[0, -1].argmax()))
            assert seq[len(prompt):] == list(generated), f"stateful decoding {list(generated)} != recomputation {seq[len(prompt):]}"
    return result.ids
