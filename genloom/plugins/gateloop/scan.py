"""GateLoop's parallel mode: an inclusive associative scan over (transition, input) pairs.

The recurrence ``h_n = a_n * h_{n-1} + b_n`` (with ``b_n = k_n^T v_n``) is the prefix composition of
the affine maps ``h -> a_n h + b_n``. Composition is associative::

    (A1, B1) . (A2, B2) = (A1 A2, A2 B1 + B2)          (first apply 1, then 2)

so all prefixes come from a Hillis-Steele scan in ceil(log2 L) rounds: in round r every position
n >= 2^r combines with position n - 2^r. O(L log L) work, log L sequential rounds.
"""

from __future__ import annotations

import torch


def associative_scan(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Inclusive scan of affine maps along dim 2: returns h with h_n = A_n h_{n-1} + B_n, h_{-1} = 0.

    A (B, H, L, K) (broadcast over the last dim of B), B (B, H, L, K, V)."""
    L = A.shape[2]
    offset = 1
    while offset < L:
        A_prev = torch.nn.functional.pad(A[:, :, :-offset], (0, 0, offset, 0), value=1.0)  # identity map before the start
        B_prev = torch.nn.functional.pad(B[:, :, :-offset], (0, 0, 0, 0, offset, 0))
        B = A[..., None] * B_prev + B
        A = A * A_prev
        offset *= 2
    return B


def associative_scan_gateloop(q, k, v, g, initial_state=None):
    """GateLoop by the associative scan. Same arguments and results as the ``linear_recurrence`` op
    with a per-channel (complex) log transition ``g`` (B, H, L, K)."""
    dtype = torch.complex128 if torch.float64 in (q.dtype, g.real.dtype) else torch.complex64
    q, k, v, g = (t.to(dtype) for t in (q, k, v, g))
    A = torch.exp(g)
    B = k[..., :, None] * v[..., None, :]
    if initial_state is not None and q.shape[2]:
        B = torch.cat([B[:, :, :1] + A[:, :, :1, :, None] * initial_state.to(dtype)[:, :, None], B[:, :, 1:]], 2)
    states = associative_scan(A, B)
    y = torch.einsum("bhlk,bhlkv->bhlv", q, states)
    final = states[:, :, -1] if q.shape[2] else (initial_state.to(dtype) if initial_state is not None else B.new_zeros(*B.shape[:2], *B.shape[3:]))
    return y, final
