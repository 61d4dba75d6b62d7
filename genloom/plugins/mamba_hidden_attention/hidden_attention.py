"""Mamba's hidden attention: the selective scan as ``y = alpha x`` with a materialised alpha.

For every batch row b and channel d, with ``delta'`` the discretised step (bias and softplus
applied), ``S_i = sum_{k<=i} delta'_k A`` (per state index n)::

    alpha[b, d, i, j] = sum_n C[b, i, n] exp(S_i - S_j)[d, n] delta'[b, j, d] B[b, j, n]     j <= i
    y[b, i, d]        = sum_j alpha[b, d, i, j] u[b, j, d] + sum_n C[b, i, n] exp(S_i)[d, n] h0[b, d, n]
    final state       = exp(S_L) h0 + sum_j exp(S_L - S_j) delta'_j B_j u_j

then ``y += D u`` and ``y *= silu(z)``, exactly the selective_scan contract.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

_recorders: list[list] = []


@contextlib.contextmanager
def record_hidden_attention():
    """Collect alpha (B, D, L, L) of every call of the ``hidden-attention`` backend in this block."""
    maps: list[torch.Tensor] = []
    _recorders.append(maps)
    try:
        yield maps
    finally:
        _recorders.remove(maps)


def _discretize(delta, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)
    return F.softplus(delta) if delta_softplus else delta


def hidden_attention(u, delta, A, B, C, delta_bias=None, delta_softplus=False, initial_state=None, *, include_own_step=False):
    """``(alpha (B, D, L, L), initial-state term (B, L, D), final state (B, D, N))``.

    ``include_own_step`` is the broken variant (the product also runs over k = j) kept for tests."""
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    delta = _discretize(delta, delta_bias, delta_softplus)
    batch, length, channels = u.shape
    log_decay = delta[..., None] * A  # (B, L, D, N), <= 0 for a decaying A
    S = log_decay.double().cumsum(1)  # double: differences of long float32 sums lose digits
    if include_own_step:
        S_j = S - log_decay.double()
    else:
        S_j = S
    diff = S[:, :, None] - S_j[:, None, :]  # (B, Li, Lj, D, N)
    causal = torch.ones(length, length, dtype=torch.bool, device=u.device).tril()[None, :, :, None, None]
    decay = torch.where(causal, torch.exp(torch.where(causal, diff, torch.zeros_like(diff))), torch.zeros_like(diff)).to(dtype)
    alpha = torch.einsum("bin,bijdn,bjd,bjn->bdij", C, decay, delta, B)
    if initial_state is None:
        initial_state = u.new_zeros(batch, channels, A.shape[1])
    h0 = initial_state.to(dtype)
    from_start = torch.einsum("bin,bidn,bdn->bid", C, torch.exp(S).to(dtype), h0)
    if length:
        to_end = torch.exp(S[:, -1:] - S).to(dtype)  # (B, L, D, N)
        final = torch.exp(S[:, -1]).to(dtype) * h0 + torch.einsum("bjdn,bjd,bjn,bjd->bdn", to_end, delta, B, u)
    else:
        final = h0
    return alpha, from_start, final


def selective_scan_hidden_attention(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """The selective scan computed as ``alpha x``: the ``selective_scan`` contract, O(L^2)."""
    out_dtype = u.dtype
    alpha, from_start, final = hidden_attention(u, delta, A, B, C, delta_bias, delta_softplus, initial_state)
    x = u.to(alpha.dtype)
    y = torch.einsum("bdij,bjd->bid", alpha, x) + from_start
    if D is not None:
        y = y + x * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    for maps in _recorders:
        maps.append(alpha.detach())
    return y.to(out_dtype), final


class HiddenAttentionBackend:
    name = "hidden-attention"

    def supports(self, device=None, dtype=None, **kw):
        if dtype is not None and not dtype.is_floating_point:
            return f"selective_scan needs a floating-point dtype, got {dtype}"
        return None

    def __call__(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
        return selective_scan_hidden_attention(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)

    def __repr__(self):
        return "selective_scan[hidden-attention]"


def make_backend(config=None, ctx=None) -> HiddenAttentionBackend:
    """Factory of the ``selective_scan`` ``hidden-attention`` backend."""
    return HiddenAttentionBackend()


def attribution_maps(model, ids: torch.Tensor, **forward_kw):
    """Run ``model`` (any model whose backbone calls ``selective_scan``) on ``ids`` under the
    hidden-attention backend. Returns ``(per_layer, rollout)``: per layer the map
    ``mean_d |alpha[:, d]|`` row-normalised (B, L, L), and their product across layers with the
    identity added for the residual stream (attention rollout), row-normalised."""
    from genloom.core import kernels

    with torch.no_grad(), record_hidden_attention() as alphas, kernels.use("selective_scan", "hidden-attention"):
        model(ids, **forward_kw)
    per_layer = []
    for alpha in alphas:
        m = alpha.abs().mean(1)
        per_layer.append(m / m.sum(-1, keepdim=True).clamp_min(1e-30))
    rollout = None
    for m in per_layer:
        eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
        step = (m + eye) / 2
        rollout = step if rollout is None else step @ rollout
    return per_layer, rollout
