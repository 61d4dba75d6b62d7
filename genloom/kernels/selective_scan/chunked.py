"""The selective scan in chunked parallel form (pure PyTorch, differentiable by autograd).

The sequence is cut into chunks of ``chunk_size`` steps. Inside a chunk, with ``a[k] = delta[k] * A``
(log of the per-step decay, <= 0) and ``x[k] = delta[k] * B[k] * u[k]``, the recurrence unrolls to::

    h[t] = exp(sum_{k<=t} a[k]) * h[start] + sum_{s<=t} exp(sum_{s<k<=t} a[k]) * x[s]

The exponents are segment sums in log space, built by a masked cumulative sum (not as a difference
of two cumulative sums, which loses precision when the sums are large), and the whole chunk is
one batched matrix-vector product per (batch, channel, state) triple. Only the state at the end of
each chunk is carried to the next, so the Python loop runs L / chunk_size times instead of L.
Work is O(L * chunk_size * D * N) and memory O(B * chunk_size^2 * D * N) per chunk.
"""

from __future__ import annotations

import torch

from genloom.kernels.selective_scan.reference import check_shapes, compute_dtype, discretize_delta, finish_output

DEFAULT_CHUNK_SIZE = 32


def segment_sums(log_decay: torch.Tensor) -> torch.Tensor:
    """``out[..., t, s] = sum_{s<k<=t} log_decay[..., k]`` for s <= t and -inf above the diagonal.

    ``log_decay`` (..., T) -> (..., T, T). Built by a masked cumsum (exact, no cancellation).
    """
    length = log_decay.shape[-1]
    repeated = log_decay[..., :, None].expand(*log_decay.shape, length)  # [..., k, s] = a[k]
    strictly_lower = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril(-1)
    sums = torch.where(strictly_lower, repeated, 0.0).cumsum(dim=-2)
    lower = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril()
    return torch.where(lower, sums, float("-inf"))


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan, chunked parallel form. Same arguments and results as the reference."""
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
    for start in range(0, length, chunk_size):
        chunk = slice(start, start + chunk_size)
        step = delta[:, chunk].transpose(1, 2)  # (B, D, T)
        log_decay = step[:, :, None, :] * A[None, :, :, None]  # (B, D, N, T)
        inputs = (step * u[:, chunk].transpose(1, 2))[:, :, None, :] * B[:, chunk].transpose(1, 2)[:, None, :, :]  # (B, D, N, T)
        weights = torch.exp(segment_sums(log_decay))  # (B, D, N, T, T)
        states = (weights @ inputs[..., None]).squeeze(-1)  # contributions of this chunk's inputs
        states = states + torch.exp(log_decay.cumsum(-1)) * state[..., None]  # and of the carried state
        outputs.append(torch.einsum("bdnt,btn->btd", states, C[:, chunk]))
        state = states[..., -1]
    y = torch.cat(outputs, dim=1) if outputs else u.new_zeros(batch, 0, channels)
    y = finish_output(y, u, D, z)
    return y.to(out_dtype), state
