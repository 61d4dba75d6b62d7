"""The Mamba backbone: selective-SSM blocks with pre-norm residuals, and its recurrent state.

Block (Gu & Dao 2023, Fig. 3 and Alg. 2), for input h (B, L, d_model)::

    x, z   = in_proj(h)                                  two streams of width d_inner
    x      = silu(causal_depthwise_conv1d(x))            kernel d_conv, left context only
    dt, B, C = x_proj(x)                                 ranks dt_rank, d_state, d_state
    delta  = softplus(dt_proj(dt))                       per channel step size (Alg. 2, line 5)
    y      = selective_scan(x, delta, A=-exp(A_log), B, C, D) * silu(z)
    out    = out_proj(y)

The scan goes through the kernel dispatcher (op ``selective_scan``), never a direct import.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core import kernels
from genloom.core.model import Backbone
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.core.state import State, as_lengths
from genloom.toolkit.recurrent import rollback_within_advance


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """The ``selective_scan`` op, through the dispatcher (reference, chunked or triton backend)."""
    return kernels.call(
        "selective_scan", u, delta, A, B, C,
        D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, initial_state=initial_state,
    )


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 (float64 for float64 inputs)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(_compute_dtype(dtype))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class _Advance:
    """What one layer consumed in the most recent advance: enough to roll back inside it.

    ``conv_input`` (B, d_inner, d_conv-1+L) is the previous window followed by the new pre-conv
    inputs; ``u``, ``delta`` (discretized, padding zeroed), ``B``, ``C`` are the scan's inputs and
    ``ssm_before`` the SSM state before the advance.
    """

    __slots__ = ("conv_input", "u", "delta", "A", "B", "C", "ssm_before")

    def __init__(self, conv_input, u, delta, A, B, C, ssm_before):
        self.conv_input, self.u, self.delta, self.A, self.B, self.C, self.ssm_before = conv_input, u, delta, A, B, C, ssm_before

    def _tensors(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def select(self, index: torch.Tensor) -> "_Advance":
        """Batch rows ``index`` (``A`` has no batch dimension)."""
        return _Advance(*(t if name == "A" else t.index_select(0, index) for name, t in zip(self.__slots__, self._tensors())))

    def clone(self) -> "_Advance":
        return _Advance(*(t.clone() for t in self._tensors()))


class MambaState(State):
    """Recurrent state of a Mamba stack: per layer the conv window and the SSM state.

    ``conv[i]`` (B, d_inner, d_conv - 1) holds the last pre-conv inputs, ``ssm[i]`` (B, d_inner,
    d_state) the SSM state (float32, float64 for float64 models). Size does not grow with length.
    The most recent advance is kept (per layer :class:`_Advance`, plus the lengths before it) so
    :meth:`rollback` can return to any point inside it.
    """

    def __init__(self, n_layers: int, batch_size: int, d_inner: int, d_state: int, d_conv: int, *, device=None, dtype=torch.float32):
        self.batch_size = batch_size
        self.conv = [torch.zeros(batch_size, d_inner, d_conv - 1, device=device, dtype=dtype) for _ in range(n_layers)]
        self.ssm = [torch.zeros(batch_size, d_inner, d_state, device=device, dtype=_compute_dtype(dtype)) for _ in range(n_layers)]
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._advances: list[_Advance | None] = [None] * n_layers
        self._lengths_before: torch.Tensor | None = None  # lengths before the most recent advance

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths

    @property
    def device(self):
        return self._lengths.device

    def _begin_advance(self, counts: torch.Tensor) -> None:
        self._tree = None
        self._lengths_before = self._lengths
        self._lengths = self._lengths + counts

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.device)
        self._tree = None
        self.conv = [t.index_select(0, index) for t in self.conv]
        self.ssm = [t.index_select(0, index) for t in self.ssm]
        self._lengths = self._lengths.index_select(0, index)
        if self._lengths_before is not None:
            self._lengths_before = self._lengths_before.index_select(0, index)
            self._advances = [a.select(index) if a is not None else None for a in self._advances]
        self.batch_size = int(index.numel())

    def rollback(self, lengths) -> None:
        """Return each sequence to ``lengths[b]`` tokens, anywhere inside the most recent advance."""
        lengths = as_lengths(lengths, self.batch_size, self.device)
        if not rollback_within_advance(lengths, self._lengths, self._lengths_before, "a Mamba state"):
            return
        kept = lengths - self._lengths_before  # tokens of the last advance each sequence keeps
        for i, advance in enumerate(self._advances):
            window = self.conv[i].shape[-1]
            index = (kept[:, None] + torch.arange(window, device=self.device))[:, None, :].expand(-1, advance.conv_input.shape[1], -1)
            self.conv[i] = advance.conv_input.gather(-1, index)
            steps = torch.arange(advance.delta.shape[1], device=self.device)
            delta = advance.delta * (steps[None, :] < kept[:, None])[..., None].to(advance.delta.dtype)  # zero step: state untouched
            _, self.ssm[i] = selective_scan(advance.u, delta, advance.A, advance.B, advance.C, initial_state=advance.ssm_before)
        self._lengths = lengths.clone()

    def keep(self, keep: torch.Tensor) -> None:
        """Keep one root-to-node path of the token tree the last advance (``Mamba.forward_tree``)
        consumed: the state becomes the state at that path's last node, exactly as if the path alone
        had been consumed (``keep`` (B, N) flags the path's nodes, root included)."""
        tree = getattr(self, "_tree", None)
        if tree is None:
            raise NotImplementedError("a Mamba state keeps a subset of its last advance only after a token tree (Mamba.forward_tree)")
        ancestors, depth, conv_index, sources, states = tree
        keep = torch.as_tensor(keep, device=self.device).to(torch.bool)
        node = (keep.long() * torch.arange(keep.shape[1], device=self.device)).argmax(1)  # breadth first: the deepest kept node
        if not bool((ancestors.to(self.device)[node] == keep).all()):
            raise ValueError("a Mamba state keeps a root-to-node path of the tree, not an arbitrary subset")
        window = conv_index.to(self.device)[node, 1:]  # (B, d_conv - 1): the path's last inputs
        for i in range(len(self.conv)):
            src = sources[i]
            self.conv[i] = src.gather(-1, window[:, None, :].expand(-1, src.shape[1], -1))
            self.ssm[i] = states[i][torch.arange(node.numel(), device=self.device), :, node]
        self._lengths = self._lengths_before + depth.to(self.device)[node] + 1
        self._lengths_before = None  # nothing to roll back into: the tree is gone
        self._advances = [None] * len(self.conv)
        self._tree = None

    def extend(self, other: State) -> None:
        """Append ``other``'s rows (the core contract's ``State.extend``): conv windows and SSM
        states are per row, so they stack; the last advance is forgotten (no rollback into it)."""
        if not isinstance(other, MambaState) or len(other.conv) != len(self.conv):
            raise NotImplementedError(f"a MambaState extends only by another MambaState of as many layers (got {type(other).__name__})")
        self.conv = [torch.cat([a, b.to(a.dtype)]) for a, b in zip(self.conv, other.conv)]
        self.ssm = [torch.cat([a, b.to(a.dtype)]) for a, b in zip(self.ssm, other.ssm)]
        self._lengths = torch.cat([self._lengths, other._lengths])
        self._advances = [None] * len(self.conv)
        self._lengths_before = None
        self._tree = None
        self.batch_size = int(self._lengths.numel())

    def snapshot(self):
        advances = [a.clone() if a is not None else None for a in self._advances]
        before = self._lengths_before.clone() if self._lengths_before is not None else None
        return ([t.clone() for t in self.conv], [t.clone() for t in self.ssm], self._lengths.clone(), advances, before)

    def restore(self, snap) -> None:
        conv, ssm, lengths, advances, before = snap
        self.conv = [t.clone() for t in conv]
        self.ssm = [t.clone() for t in ssm]
        self._lengths = lengths.clone()
        self._advances = [a.clone() if a is not None else None for a in advances]
        self._lengths_before = before.clone() if before is not None else None
        self.batch_size = int(lengths.numel())
        self._tree = None


class MambaMixer(nn.Module):
    """One Mamba block's mixer (Fig. 3): in_proj, causal conv, selective SSM, gate, out_proj."""

    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        d_inner, rank, n = cfg.d_inner, cfg.resolved_dt_rank, cfg.d_state
        self.d_inner, self.dt_rank, self.d_state, self.d_conv = d_inner, rank, n, cfg.d_conv
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=cfg.bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d_inner, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.bias)
        # S4D-real initialisation: A[:, n] = -(n + 1), stored as log for positivity
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self._init_dt(cfg)

    @torch.no_grad()
    def _init_dt(self, cfg) -> None:
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        # softplus(bias) = dt ~ log-uniform in [dt_min, dt_max] (section 3.6 / appendix)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def forward(self, h: torch.Tensor, state: MambaState | None = None, counts: torch.Tensor | None = None, step_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` (B, L, d_model) normalized input. ``counts`` (B,) real tokens per row (they come
        first); ``step_mask`` (B, L) marks them, or None when every token is real."""
        batch, length, _ = h.shape
        x, z = self.in_proj(h).chunk(2, dim=-1)
        i = self.layer_index
        window = state.conv[i].to(x.dtype) if state is not None else x.new_zeros(batch, self.d_inner, self.d_conv - 1)
        conv_input = torch.cat([window, x.transpose(1, 2)], dim=-1)  # (B, E, d_conv-1+L): left context, then the new tokens
        u = F.silu(F.conv1d(conv_input, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)).transpose(1, 2)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # the bias is added inside the scan (delta_bias)
        A = -torch.exp(self.A_log)
        if state is None and step_mask is None:
            y, _ = selective_scan(u, dt, A, B, C, D=self.D, z=z, delta_bias=self.dt_proj.bias, delta_softplus=True)
            return self.out_proj(y)
        delta = F.softplus(dt + self.dt_proj.bias)
        if step_mask is not None:
            delta = delta * step_mask[..., None].to(delta.dtype)  # padded steps leave the state untouched
        initial = state.ssm[i] if state is not None else None
        y, final = selective_scan(u, delta, A, B, C, D=self.D, z=z, initial_state=initial)
        if state is not None:
            state._advances[i] = _Advance(conv_input.detach(), u.detach(), delta.detach(), A.detach(), B.detach(), C.detach(), initial.detach())
            if counts is None:
                state.conv[i] = conv_input[..., length:]
            else:
                index = (counts[:, None] + torch.arange(self.d_conv - 1, device=h.device))[:, None, :].expand(-1, self.d_inner, -1)
                state.conv[i] = conv_input.gather(-1, index)
            state.ssm[i] = final
        return self.out_proj(y)


    def forward_tree(self, h: torch.Tensor, state: MambaState, parents, conv_index: torch.Tensor):
        """The mixer over a token tree ``h`` (B, N, d_model) continuing ``state`` (breadth-first nodes,
        ``parents[i]`` = -1 for the root). Each node's causal convolution reads its own path
        (``conv_index`` (N, d_conv) into ``[state window, nodes]``) and the scan runs through the
        ``tree_selective_scan`` op. Returns the output and (conv sources, every node's SSM state)."""
        x, z = self.in_proj(h).chunk(2, dim=-1)
        i = self.layer_index
        src = torch.cat([state.conv[i].to(x.dtype), x.transpose(1, 2)], dim=-1)  # (B, E, d_conv-1+N)
        taps = src[:, :, conv_index]  # (B, E, N, d_conv), oldest to newest along each path
        u = F.silu((taps * self.conv1d.weight[:, None, 0, :]).sum(-1) + (self.conv1d.bias[:, None] if self.conv1d.bias is not None else 0)).transpose(1, 2)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(F.linear(dt, self.dt_proj.weight) + self.dt_proj.bias)
        A = -torch.exp(self.A_log)
        y, states = kernels.call("tree_selective_scan", u, delta, A, B, C, D=self.D, z=z, parents=tuple(parents), initial_state=state.ssm[i])
        return self.out_proj(y), (src.detach(), states.detach())


class MambaLayer(nn.Module):
    """Pre-norm residual block: ``h + mixer(norm(h))``."""

    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = MambaMixer(cfg, layer_index)

    def forward(self, h, **kw):
        return h + self.mixer(self.norm(h), **kw)


class Mamba(Backbone):
    """A stack of Mamba blocks; serves the causal pattern only (a recurrence cannot look ahead)."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(MambaLayer(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.final_norm else nn.Identity()
        with torch.no_grad():  # GPT-2 style: shrink residual-branch outputs by 1/sqrt(n_layers)
            for layer in self.layers:
                layer.mixer.out_proj.weight.div_(math.sqrt(cfg.n_layers))

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state: MambaState | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the mamba backbone serves only the causal pattern (a recurrence cannot look ahead), got '{pattern.kind}'")
        batch, length, _ = h.shape
        order = counts = step_mask = None
        if valid is not None and not bool(valid.all()):
            # move each row's real tokens to the front (stable), so padding only ever trails
            valid = valid.to(device=h.device, dtype=torch.bool)
            order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
            h = h.gather(1, order[..., None].expand_as(h))
            counts = valid.sum(1)
            step_mask = torch.arange(length, device=h.device)[None, :] < counts[:, None]
        if state is not None:
            state._begin_advance(counts if counts is not None else torch.full((batch,), length, dtype=torch.long, device=h.device))
        for layer in self.layers:
            h = layer(h, state=state, counts=counts, step_mask=step_mask)
        h = self.norm(h)
        if order is not None:
            h = torch.empty_like(h).scatter(1, order[..., None].expand_as(h), h)
        return h

    def serves_trees(self) -> bool:
        """True when a ``tree_selective_scan`` kernel is installed (the ``stree`` plugin), so
        :meth:`forward_tree` can verify a token tree in one pass."""
        return bool(kernels.status("tree_selective_scan"))

    def forward_tree(self, h: torch.Tensor, *, parents, state: MambaState) -> torch.Tensor:
        """Hidden states (B, N, d_model) of a token tree's nodes continuing ``state``, each node as if
        its root-to-node path alone followed the state (STree). ``parents`` (breadth first; -1 for a
        root). The state then holds the tree until :meth:`MambaState.keep` picks one path."""
        from genloom.core.pattern import tree_ancestors

        ancestors, depth = tree_ancestors(parents)
        d_conv, n = self.cfg.d_conv, len(parents)
        conv_index = torch.empty(n, d_conv, dtype=torch.long)
        for node in range(n):  # the last d_conv inputs along the path, past the root into the window
            chain, u, back = [], node, 0
            for _ in range(d_conv):
                if u >= 0:
                    chain.append(d_conv - 1 + u)
                    u = parents[u]
                else:
                    back += 1
                    chain.append(d_conv - 1 - back)
            conv_index[node] = torch.tensor(chain[::-1])
        conv_index = conv_index.to(h.device)
        sources, states = [], []
        state._begin_advance(torch.zeros(h.shape[0], dtype=torch.long, device=h.device))
        for layer in self.layers:
            out, (src, st) = layer.mixer.forward_tree(layer.norm(h), state, parents, conv_index)
            h = h + out
            sources.append(src)
            states.append(st)
        state._tree = (ancestors, depth, conv_index, sources, states)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> MambaState:
        """A fresh state; ``capacity`` is ignored (the state does not grow with length)."""
        cfg = self.cfg
        if device is None or dtype is None:
            param = next(self.parameters())
            device = device if device is not None else param.device
            dtype = dtype if dtype is not None else param.dtype
        return MambaState(cfg.n_layers, batch_size, cfg.d_inner, cfg.d_state, cfg.d_conv, device=device, dtype=dtype)


def build(config, ctx) -> Mamba:
    return Mamba(config)
