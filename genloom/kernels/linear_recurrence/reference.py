"""The gated linear recurrence step by step: the definition the other backends are tested against.

For every batch row and head, with a matrix state ``h`` (K, V)::

    h[t] = diag(exp(g[t])) h[t-1] + k[t]^T v[t]        (outer product of a key and a value)
    y[t] = q[t] h[t]                                   (a query reads the state)

``g`` is the log of the decay ``a[t] = exp(g[t])``. Three kinds of decay share the one op:

- scalar per head and step: ``g`` (B, H, L) -- retention (a constant gamma), Aaren-free linear
  attention with forgetting, RWKV-4/5-like heads;
- per key channel: ``g`` (B, H, L, K) -- gated linear attention, Mega-style per-dimension decay;
- complex: ``g`` complex (real part <= 0 for a decay, imaginary part a rotation) -- GateLoop's
  data-controlled complex state transitions, xPos/RoPE-style retention phases. The state and
  output are then complex; q, k, v may be real or complex.

Shapes: q, k (B, H, L, K); v (B, H, L, V); state (B, H, K, V). Computed in float32 (float64 for
float64 inputs; complex64/complex128 when anything is complex); ``y`` is returned in that compute
dtype, the final state too.
"""

from __future__ import annotations

import torch


def compute_dtype(*tensors) -> torch.dtype:
    """float64 if any input is float64/complex128, complex if any input is complex."""
    present = [t for t in tensors if t is not None]
    wide = any(t.dtype in (torch.float64, torch.complex128) for t in present)
    if any(t.is_complex() for t in present):
        return torch.complex128 if wide else torch.complex64
    return torch.float64 if wide else torch.float32


def check_shapes(q, k, v, g, initial_state=None) -> None:
    """Raise a ValueError naming the argument whose shape does not fit the others."""
    if q.dim() != 4:
        raise ValueError(f"linear_recurrence: q must be (B, H, L, K), got shape {tuple(q.shape)}")
    B, H, L, K = q.shape
    if tuple(k.shape) != (B, H, L, K):
        raise ValueError(f"linear_recurrence: k must have q's shape {(B, H, L, K)}, got {tuple(k.shape)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, H, L):
        raise ValueError(f"linear_recurrence: v must be (B={B}, H={H}, L={L}, V), got {tuple(v.shape)}")
    if tuple(g.shape) not in ((B, H, L), (B, H, L, K)):
        raise ValueError(f"linear_recurrence: g (log decay) must be (B, H, L) or (B, H, L, K) = {(B, H, L, K)}, got {tuple(g.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, v.shape[-1]):
        raise ValueError(f"linear_recurrence: initial_state must have shape {(B, H, K, v.shape[-1])}, got {tuple(initial_state.shape)}")


def prepare(q, k, v, g, initial_state):
    """Checked inputs in the compute dtype, ``g`` always (B, H, L, K_g) with K_g in {1, K}."""
    check_shapes(q, k, v, g, initial_state)
    dtype = compute_dtype(q, k, v, g, initial_state)
    q, k, v, g = (t.to(dtype) for t in (q, k, v, g))
    if g.dim() == 3:
        g = g[..., None]
    B, H, L, K = q.shape
    state = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    return q, k, v, g, state


def linear_recurrence_reference(q, k, v, g, initial_state=None):
    """The recurrence, one step at a time. Returns ``(y (B, H, L, V), final_state (B, H, K, V))``."""
    q, k, v, g, state = prepare(q, k, v, g, initial_state)
    outputs = []
    for t in range(q.shape[2]):
        state = torch.exp(g[:, :, t, :, None]) * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    y = torch.stack(outputs, 2) if outputs else v.new_zeros(*v.shape)
    return y, state


def linear_recurrence_step(state, q_t, k_t, v_t, g_t):
    """One step for decoding: ``(y_t (B, H, V), new_state)``; q_t, k_t (B, H, K), v_t (B, H, V),
    g_t (B, H) or (B, H, K). Functional: the given state is not modified."""
    y, new = linear_recurrence_reference(q_t[:, :, None], k_t[:, :, None], v_t[:, :, None], g_t[:, :, None], state)
    return y[:, :, 0], new
