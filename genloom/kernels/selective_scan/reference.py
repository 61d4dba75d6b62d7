"""The selective scan (Mamba's S6 recurrence), step by step: the definition the other backends are tested against.

For every batch element ``b``, channel ``d`` and state index ``n`` (Gu & Dao 2023, eq. 2a-2b with
the zero-order-hold discretization of eq. 4, ``B`` discretized by Euler as in the paper's code)::

    delta'      = softplus(delta + delta_bias)          (or delta + delta_bias without softplus)
    h[t]        = exp(delta'[t] * A) * h[t-1] + delta'[t] * B[t] * u[t]
    y[t]        = <C[t], h[t]> + D * u[t]
    y[t]       *= silu(z[t])                            (when a gate z is given)

Shapes: u, delta, z (B, L, D); A (D, N); B, C (B, L, N); D, delta_bias (D,); state (B, D, N).
Every backend computes in float32 (float64 when the inputs are float64), returns ``y`` in ``u``'s
dtype and the final state in the compute dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def discretize_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """The step size the recurrence uses: ``softplus(delta + delta_bias)`` (bias and softplus optional)."""
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def check_shapes(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None) -> None:
    """Raise a ValueError naming the argument whose shape does not fit the others."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, L, D), got shape {tuple(u.shape)}")
    batch, length, channels = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"selective_scan: A must be (D={channels}, N), got {tuple(A.shape)}")
    state_size = A.shape[1]
    expected = {
        "delta": (delta, (batch, length, channels)),
        "B": (B, (batch, length, state_size)),
        "C": (C, (batch, length, state_size)),
        "D": (D, (channels,)),
        "z": (z, (batch, length, channels)),
        "delta_bias": (delta_bias, (channels,)),
        "initial_state": (initial_state, (batch, channels, state_size)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(tensor.shape)}")


def finish_output(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """Add the D skip connection and the SiLU gate (shared by every backend)."""
    if D is not None:
        y = y + u * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan by the step-by-step recurrence. Returns ``(y (B, L, D), final_state (B, D, N))``."""
    check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    out_dtype = u.dtype
    dtype = compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    delta = discretize_delta(delta, delta_bias, delta_softplus)
    batch, length, channels = u.shape
    if initial_state is None:
        state = u.new_zeros(batch, channels, A.shape[1])
    else:
        state = initial_state.to(dtype)
    outputs = []
    for t in range(length):
        step = delta[:, t, :, None]  # (B, D, 1)
        state = torch.exp(step * A) * state + step * B[:, t, None, :] * u[:, t, :, None]
        outputs.append(torch.einsum("bdn,bn->bd", state, C[:, t]))
    y = torch.stack(outputs, dim=1) if outputs else u.new_zeros(batch, 0, channels)
    y = finish_output(y, u, D, z)
    return y.to(out_dtype), state


def selective_state_update(
    state, u_t, delta_t, A, B_t, C_t, D=None, z_t=None, delta_bias=None, delta_softplus=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence, for decoding: ``(y_t (B, D), new_state (B, D, N))``.

    ``state`` (B, D, N); ``u_t``, ``delta_t``, ``z_t`` (B, D); ``B_t``, ``C_t`` (B, N). Functional: the
    given state is not modified. Equals :func:`selective_scan_reference` on a length-1 sequence.
    """
    out_dtype = u_t.dtype
    dtype = compute_dtype(u_t.dtype)
    u_t, delta_t, A, B_t, C_t = (t.to(dtype) for t in (u_t, delta_t, A, B_t, C_t))
    step = discretize_delta(delta_t, delta_bias, delta_softplus)[..., None]  # (B, D, 1)
    new_state = torch.exp(step * A) * state.to(dtype) + step * B_t[:, None, :] * u_t[..., None]
    y = torch.einsum("bdn,bn->bd", new_state, C_t)
    y = finish_output(y, u_t, D, z_t)
    return y.to(out_dtype), new_state
