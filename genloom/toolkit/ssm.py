"""Diagonal state space layers shared by the convolutional/recurrent SSM backbones (gss, smr).

:class:`DiagonalSSM` is a DSS/S4D-style layer over H channels with N complex modes per channel.
Its impulse response is the long-convolution kernel ``K[h, l] = Re(sum_n w~[h, n] exp(dt[h] lambda[n] l))``
(``w~`` the zero-order-hold residues), applied through the ``fft_conv`` kernel op for full
sequences; the same system is the modal recurrence ``s(t) = exp(dt lambda) s(t-1) + u(t)``,
``y(t) = Re(sum_n w~ s(t)) + D u(t)``, run through the ``linear_recurrence`` op (heads = channels,
keys = modes, value width 1) for decoding, padding and rollback. Initialisation is S4D-Lin
(``Re lambda = -1/2``, ``Im lambda = pi n``), ``log dt`` uniform in [log dt_min, log dt_max].

Dense SSMs (lssl, spacetime): ``hippo`` (LegS/LegT A, B), ``bilinear`` discretisation,
``dense_kernel`` (``C Abar^k Bbar`` by Krylov doubling), ``dense_convolve`` (through ``fft_conv``)
and ``dense_recurrence`` (the step-by-step reference and decoding path).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.core import kernels
from genloom.toolkit.recurrent import replay_linear_recurrence


class DiagonalSSM(nn.Module):
    """Diagonal state space layer over H channels with N complex modes (DSS-exp, ZOH residues)."""

    def __init__(self, channels: int, modes: int, dt_min: float, dt_max: float):
        super().__init__()
        self.channels, self.modes = channels, modes
        self.log_neg_real = nn.Parameter(torch.full((modes,), math.log(0.5)))  # Re(lambda) = -0.5 (S4D-Lin)
        self.imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32))  # Im(lambda) = pi n
        self.log_dt = nn.Parameter(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.residue_re = nn.Parameter(torch.randn(channels, modes) * modes ** -0.5)
        self.residue_im = nn.Parameter(torch.randn(channels, modes) * modes ** -0.5)
        self.skip = nn.Parameter(torch.ones(channels))

    def modes_and_residues(self, dtype: torch.dtype):
        """(log decays dt * lambda (H, N), ZOH residues w~ (H, N)), complex."""
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        lam = torch.complex(-torch.exp(self.log_neg_real), self.imag).to(complex_dtype)
        dt_lam = torch.exp(self.log_dt).to(complex_dtype)[:, None] * lam[None, :]
        residue = torch.complex(self.residue_re, self.residue_im).to(complex_dtype)
        return dt_lam, residue * torch.expm1(dt_lam) / lam[None, :]

    def kernel(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """K (H, L): K[h, l] = Re(sum_n w~[h, n] exp(dt[h] lambda[n] l)), the impulse response."""
        dt_lam, residue = self.modes_and_residues(dtype)
        lags = torch.arange(length, device=dt_lam.device, dtype=dt_lam.real.dtype)
        return torch.einsum("hn,hnl->hl", residue, torch.exp(dt_lam[..., None] * lags)).real.to(dtype)

    def convolve(self, u: torch.Tensor) -> torch.Tensor:
        """Full-sequence DSS by the ``fft_conv`` op (u (B, L, H))."""
        return kernels.call("fft_conv", u, self.kernel(u.shape[1], u.dtype), skip=self.skip.to(u.dtype))

    def recurrence_inputs(self, u: torch.Tensor, steps: torch.Tensor | None):
        """The modal recurrence as ``linear_recurrence`` inputs: heads = channels, keys = modes, value width 1."""
        B, L, H = u.shape
        dt_lam, residue = self.modes_and_residues(u.dtype)
        q = residue[None, :, None, :].expand(B, H, L, self.modes)
        k = torch.ones_like(q)
        g = dt_lam[None, :, None, :].expand(B, H, L, self.modes)
        v = u.transpose(1, 2)[..., None].to(q.dtype)
        if steps is not None:
            keep = steps[:, None, :, None]
            g, k = torch.where(keep, g, torch.zeros_like(g)), torch.where(keep, k, torch.zeros_like(k))
        return q, k, v, g

    def recur(self, u: torch.Tensor, state: torch.Tensor | None, steps: torch.Tensor | None):
        """DSS by the modal recurrence: ``(y (B, L, H), final modal state (B, H, N, 1), record)``."""
        q, k, v, g = self.recurrence_inputs(u, steps)
        y, final = kernels.call("linear_recurrence", q, k, v, g, initial_state=state)
        y = y[..., 0].real.transpose(1, 2).to(u.dtype) + u * self.skip.to(u.dtype)
        return y, final, {"k": k, "v": v, "g": g}


    def replay(self, before: torch.Tensor, record: dict, keep: torch.Tensor) -> torch.Tensor:
        """The modal state after feeding, from ``before``, only the steps of ``record`` where ``keep``."""
        return replay_linear_recurrence(before, record, keep)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.channels, self.modes, 1, device=device, dtype=complex_dtype)


# ---------------------------------------------------------------------------------------------
# Dense (non-diagonal) state space models: HiPPO matrices, discretisation, kernel and recurrence.
# Shared by the LSSL, SpaceTime and LS4 backbones. Shapes: A (..., N, N), B (..., N), C (..., N),
# with any leading channel dimensions (H,) broadcast together.
# ---------------------------------------------------------------------------------------------


def hippo(measure: str, state_size: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO state matrix and input vector ``(A (N, N), B (N,))`` of ``measure``.

    ``legs`` (scaled Legendre): ``A[n, k] = -sqrt(2n+1) sqrt(2k+1)`` below the diagonal, ``-(n+1)``
    on it, 0 above; ``B[n] = sqrt(2n+1)``. ``legt`` (translated Legendre, unit window, halved for
    the time scale): ``A[n, k] = -(1/2) sqrt(2n+1) sqrt(2k+1)`` for ``k <= n`` and
    ``-(1/2) (-1)^(n-k) sqrt(2n+1) sqrt(2k+1)`` above the diagonal; ``B[n] = (1/2) sqrt(2n+1)``.
    """
    q = torch.arange(state_size, dtype=dtype)
    r = torch.sqrt(2 * q + 1)
    row, col = q[:, None], q[None, :]
    if measure == "legs":
        a = -torch.where(row > col, r[:, None] * r[None, :], torch.zeros((), dtype=dtype)) - torch.diag(q + 1)
        return a, r.clone()
    if measure == "legt":
        sign = torch.where(row < col, (-1.0) ** (row - col), torch.ones((), dtype=dtype))
        return -0.5 * r[:, None] * sign * r[None, :], 0.5 * r
    raise ValueError(f"measure must be 'legs' or 'legt', got '{measure}'")


def bilinear(a: torch.Tensor, b: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (Tustin) discretisation: ``Abar = (I - dt/2 A)^-1 (I + dt/2 A)``, ``Bbar = (I - dt/2 A)^-1 dt B``.

    ``a`` (N, N) or (H, N, N), ``b`` (N,) or (H, N), ``dt`` (H,): returns (H, N, N), (H, N).
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    half = (dt / 2)[:, None, None]
    left = eye - half * a
    a_bar = torch.linalg.solve(left, eye + half * a)
    b_bar = torch.linalg.solve(left, (dt[:, None] * b.expand(dt.shape[0], -1))[..., None])[..., 0]
    return a_bar, b_bar


def dense_kernel(a_bar: torch.Tensor, b_bar: torch.Tensor, c: torch.Tensor, length: int) -> torch.Tensor:
    """The convolution kernel ``K[h, k] = C_h Abar_h^k Bbar_h`` for k < length: (H, length).

    The Krylov vectors ``Abar^k Bbar`` are built by doubling (``[v, A v, ..., A^(m-1) v]`` and
    ``A^m`` give the next m by one product), so the cost is O(log L) batched matrix products.
    """
    krylov = b_bar[..., None]  # (H, N, 1): column k is Abar^k Bbar
    power = a_bar
    while krylov.shape[-1] < length:
        krylov = torch.cat([krylov, power @ krylov], dim=-1)
        power = power @ power
    return torch.einsum("hn,hnl->hl", c, krylov[..., :length])


def dense_convolve(u: torch.Tensor, kernel: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``y = K * u + D u`` (u (B, L, H), K (H, L), D (H,)) through the ``fft_conv`` kernel op."""
    return kernels.call("fft_conv", u, kernel.to(u.dtype), skip=skip.to(u.dtype))


def dense_recurrence(a_bar: torch.Tensor, b_bar: torch.Tensor, c: torch.Tensor, skip: torch.Tensor,
                     u: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same system step by step: ``x_k = Abar x_(k-1) + Bbar u_k``, ``y_k = C x_k + D u_k``.

    ``u`` (B, L, H); returns ``(y (B, L, H), final state (B, H, N))``. The reference the
    convolutional view is checked against, and the decoding path of closed-loop forecasters.
    """
    batch, length, channels = u.shape
    x = torch.zeros(batch, channels, a_bar.shape[-1], dtype=u.dtype, device=u.device) if state is None else state
    outputs = []
    for k in range(length):
        x = torch.einsum("hnm,bhm->bhn", a_bar, x) + b_bar * u[:, k, :, None]
        outputs.append(torch.einsum("hn,bhn->bh", c, x) + skip * u[:, k])
    return torch.stack(outputs, 1), x


def companion(a: torch.Tensor) -> torch.Tensor:
    """The companion matrix ``A = S + a e_p^T`` (ones on the sub-diagonal, last column ``a``): a (H, p) -> (H, p, p)."""
    p = a.shape[-1]
    shift = torch.diag(torch.ones(p - 1, dtype=a.dtype, device=a.device), -1)
    last = torch.zeros(p, dtype=a.dtype, device=a.device)
    last[-1] = 1.0
    return shift + a[..., :, None] * last


def companion_kernel(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, length: int) -> torch.Tensor:
    """``K[h, k] = c_h A_h^k b_h`` for the companion matrices ``A_h = S + a_h e_p^T``, k < length: (H, length).

    Without matrix powers per lag: at the L-th roots of unity ``z`` the truncated generating
    function is ``sum_(k<L) K_k z^k = c (I - A^L) (I - z A)^-1 b``; ``(I - z S)^-1`` is the
    geometric lower-triangular sum ``x_i -> sum_(j<=i) z^(i-j) x_j`` and the rank-one last column
    is added by Sherman-Morrison, so each frequency costs O(p); an inverse FFT returns K. ``A^L``
    takes O(log L) matrix products. a, b, c: (H, p).
    """
    dtype = torch.complex128 if a.dtype == torch.float64 else torch.complex64
    p = a.shape[-1]
    z = torch.exp(-2j * math.pi * torch.arange(length, device=a.device, dtype=torch.float64) / length).to(dtype)  # (L,)
    powers = z[:, None] ** torch.arange(p, device=a.device)  # (L, p): z^i

    def shift_solve(x):  # (I - zS)^-1 x for x (..., H, p), every z: (L, H, p)
        return powers[:, None, :] * torch.cumsum(x.to(dtype) / powers[:, None, :], dim=-1)

    w = shift_solve(b.expand_as(a))
    q = shift_solve(z[:, None, None] * a.to(dtype))
    resolvent_b = w + q * (w[..., -1:] / (1 - q[..., -1:]))  # (I - zA)^-1 b
    power = torch.linalg.matrix_power(companion(a), length)
    c_tilde = (c[..., None, :] @ (torch.eye(p, dtype=a.dtype, device=a.device) - power))[..., 0, :]
    spectrum = torch.einsum("hp,lhp->hl", c_tilde.to(dtype), resolvent_b)
    return torch.fft.ifft(spectrum, dim=-1).real.to(a.dtype)
