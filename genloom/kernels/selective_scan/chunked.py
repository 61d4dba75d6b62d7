"""The selective scan in chunked parallel form (pure PyTorch, differentiable by autograd).

Scan-then-propagate over chunks of T steps (the two-level decomposition of a linear recurrence).
With ``a[t] = delta[t] * A`` (log of the per-step decay, <= 0) and ``x[t] = delta[t] * B[t] * u[t]``:

1. every chunk is scanned from a zero state, all chunks at once: T recurrence steps over
   (B, chunks, D, N) give the chunk-local states ``g[t]``;
2. the log-space cumulative sum ``S[t] = sum_{chunk start < k <= t} a[k]`` gives each step's decay
   since its chunk began, ``exp(S[t])`` (a direct cumulative sum: no differences of large sums,
   so no cancellation, and exp of a value <= 0 never overflows);
3. the state entering each chunk is carried across chunks (one step per chunk):
   ``h_in[c+1] = exp(S[c, end]) * h_in[c] + g[c, end]``;
4. every step's state is ``h[t] = g[t] + exp(S[t]) * h_in[chunk of t]`` and ``y[t] = <C[t], h[t]>``.

The Python loop runs T + L/T times instead of L (T = ceil(sqrt(L)) by default), each step over
L/T times more elements: the form a parallel machine wants. It materializes (B, L, D, N) tensors,
which on a CPU costs more memory traffic than the reference's cache-resident state (see
docs/kernels/selective_scan.md for measurements, and why the T x T "segment-sum matrix" form of
the chunk was measured and rejected).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genloom.kernels.selective_scan.reference import check_shapes, compute_dtype, discretize_delta, finish_output

DEFAULT_CHUNK_SIZE = None  # None: ceil(sqrt(L)), which minimizes the number of sequential steps


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan, chunked parallel form. Same arguments and results as the reference."""
    check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    out_dtype = u.dtype
    dtype = compute_dtype(u.dtype)
    u_in = u.to(dtype)
    delta, A, B, C = (t.to(dtype) for t in (delta, A, B, C))
    delta = discretize_delta(delta, delta_bias, delta_softplus)
    batch, length, channels = u.shape
    state_size = A.shape[1]
    state = u_in.new_zeros(batch, channels, state_size) if initial_state is None else initial_state.to(dtype)
    if length == 0:
        return u.new_zeros(batch, 0, channels), state
    size = chunk_size or max(1, math.isqrt(length - 1) + 1)
    chunks = -(-length // size)
    pad = chunks * size - length  # padded steps have delta = 0 and u = 0: identity steps
    uu, delta, B, C = (F.pad(t, (0, 0, 0, pad)) if pad else t for t in (u_in, delta, B, C))

    shape = (batch, chunks, size, channels, state_size)
    log_decay = (delta[..., None] * A).view(shape)
    inputs = ((delta * uu)[..., None] * B[:, :, None, :]).view(shape)
    decay = torch.exp(log_decay)

    local = inputs.new_zeros(batch, chunks, channels, state_size)  # 1. every chunk from a zero state
    local_states = []
    for t in range(size):
        local = torch.addcmul(inputs[:, :, t], decay[:, :, t], local)
        local_states.append(local)
    local_states = torch.stack(local_states, dim=2)

    since_start = torch.exp(log_decay.cumsum(dim=2))  # 2. decay since the chunk began

    entering = []  # 3. the state entering each chunk
    for c in range(chunks):
        entering.append(state)
        state = torch.addcmul(local_states[:, c, -1], since_start[:, c, -1], state)
    entering = torch.stack(entering, dim=1)

    states = torch.addcmul(local_states, since_start, entering[:, :, None])  # 4.
    y = torch.einsum("bctdn,bctn->bctd", states, C.view(batch, chunks, size, state_size))
    y = y.reshape(batch, chunks * size, channels)[:, :length]
    y = finish_output(y, u_in, D, z)
    return y.to(out_dtype), state
