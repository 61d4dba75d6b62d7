"""Causal long convolution by the FFT: O(L log L) instead of O(L^2).

The product of two discrete Fourier transforms is a *circular* convolution. Zero-padding both
the input and the filter to ``n >= L + min(K, L) - 1`` points makes the circular sum equal the
linear one on the first L outputs (the wrap-around terms land on padded zeros), so
``y = irfft(rfft(u, n) * rfft(k, n), n)[:L]`` is the causal convolution exactly up to rounding.
Without the padding (n = L) the tail of the sequence leaks into its head: the result is no longer
causal (``tests/kernels/test_fft_conv.py`` shows the agreement test fails for that variant).
``n`` is rounded up to a product of small primes, where FFTs are fastest.
"""

from __future__ import annotations

import torch

from genloom.kernels.fft_conv.reference import check_shapes, compute_dtype, finish


def fast_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (pocketfft and cuFFT are fastest on such lengths)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fft_conv_fft(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None, *, pad: bool = True) -> torch.Tensor:
    """Causal convolution of ``u`` (B, L, D) by ``k`` (D, K) through real FFTs.

    ``pad=False`` is the broken circular variant (kept for the test that shows it fails)."""
    check_shapes(u, k, skip)
    dtype = compute_dtype(u.dtype)
    x = u.to(dtype)
    length = x.shape[1]
    if length == 0:
        return u.clone()
    k = k[:, :length].to(dtype)
    n = fast_length(length + k.shape[1] - 1) if pad else length
    spectrum = torch.fft.rfft(x, n=n, dim=1) * torch.fft.rfft(k, n=n, dim=1).T  # (B, n//2+1, D)
    y = torch.fft.irfft(spectrum, n=n, dim=1)[:, :length]
    return finish(y, x, skip).to(u.dtype)
