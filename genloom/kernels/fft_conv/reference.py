"""Causal long convolution by its definition: the sum over lags, the reference every backend is tested against.

For every batch row ``b``, channel ``d`` and step ``t`` (a depthwise causal convolution with a
filter as long as the sequence, as in S4, H3, Hyena, GSS and Mega's EMA)::

    y[b, t, d] = sum_{s=0}^{min(t, K-1)} k[d, s] * u[b, t - s, d]     (+ skip[d] * u[b, t, d])

Shapes: ``u`` (B, L, D); ``k`` (D, K) with any filter length K >= 1 (lags past K are zero; lags
past L are never used); ``skip`` (D,). Every backend computes in float32 (float64 for float64
inputs) and returns ``y`` in ``u``'s dtype. The loop runs over the lags, O(L * K) work: each lag
adds one shifted copy of the input.
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_shapes(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None) -> None:
    """Raise a ValueError naming the argument whose shape does not fit."""
    if u.dim() != 3:
        raise ValueError(f"fft_conv: u must be (B, L, D), got shape {tuple(u.shape)}")
    channels = u.shape[-1]
    if k.dim() != 2 or k.shape[0] != channels or k.shape[1] < 1:
        raise ValueError(f"fft_conv: k must be (D={channels}, K >= 1), got shape {tuple(k.shape)}")
    if skip is not None and tuple(skip.shape) != (channels,):
        raise ValueError(f"fft_conv: skip must have shape ({channels},), got {tuple(skip.shape)}")


def finish(y: torch.Tensor, u: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    return y + u * skip.to(y.dtype) if skip is not None else y


def fft_conv_reference(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution of ``u`` (B, L, D) by the filters ``k`` (D, K), lag by lag."""
    check_shapes(u, k, skip)
    dtype = compute_dtype(u.dtype)
    x, k = u.to(dtype), k.to(dtype)
    length = x.shape[1]
    y = torch.zeros_like(x)
    for lag in range(min(length, k.shape[1])):
        y = y + torch.nn.functional.pad(x[:, : length - lag], (0, 0, lag, 0)) * k[:, lag]
    return finish(y, x, skip).to(u.dtype)
