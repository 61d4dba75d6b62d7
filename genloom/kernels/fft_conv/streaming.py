"""Streaming causal convolution: feed the sequence in pieces, keep a buffer of future contributions.

This is the chunked backend of ``fft_conv`` and its decoding path (FutureFill, Agarwal et al.
2024, arXiv 2410.03766). A convolution's output at step t sums the filter against *every* earlier
input, so naive step-by-step generation costs O(t) per token, O(L^2) in all. FutureFill splits
that sum by where the inputs sit:

- inputs already **flushed** (whole blocks of ``block`` tokens in the past): their contributions to
  all later outputs were added, once, to the buffer ``future`` with one FFT convolution of the block
  against the filter (O((block + K) log) per block);
- inputs **pending** since the last flush (fewer than ``block`` of them): summed directly, O(block)
  per new output.

So ``y[t] = future[t] + sum_{pending s <= t} k[t - s] u[s]``. With block ~ sqrt(L log L) the total
work over L tokens is O(L^{3/2} sqrt(log L)) instead of O(L^2), and it is exact: every (s, t) pair
is counted once, either in a flush or directly.

The stream is functional in the sense that every update creates new tensors (no in-place writes),
so :meth:`ConvStream.snapshot` is O(1) and autograd flows through it.
"""

from __future__ import annotations

import math

import torch

from genloom.kernels.fft_conv.fft import fast_length, fft_conv_fft
from genloom.kernels.fft_conv.reference import check_shapes, compute_dtype, finish


class ConvStream:
    """Causal convolution by the filters ``k`` (D, K) of an input that arrives in pieces.

    ``feed(u)`` takes (B, n, D) new inputs and returns their n outputs (without a skip term);
    ``block`` is the flush size (FutureFill's epoch length). ``position`` counts inputs fed.
    """

    def __init__(self, k: torch.Tensor, batch_size: int, *, block: int = 64, dtype=None):
        if block < 1:
            raise ValueError(f"block must be at least 1, got {block}")
        dtype = compute_dtype(dtype or k.dtype)
        self.k = k.to(dtype)
        self.block = block
        channels = k.shape[0]
        self.future = self.k.new_zeros(batch_size, 0, channels)  # contributions to outputs flushed..flushed+len-1
        self.pending = self.k.new_zeros(batch_size, 0, channels)  # inputs since the last flush
        self.flushed = 0  # inputs already folded into ``future``
        self._spectrum = None  # (n, rfft of the filter at n points), reused by every flush
        self.work = 0  # multiply-adds spent, per batch row (direct sums: lags x D; a convolution by FFTs: ~n log2 n x D per transform)

    @property
    def position(self) -> int:
        return self.flushed + self.pending.shape[1]

    def feed(self, u: torch.Tensor) -> torch.Tensor:
        outputs, start = [], 0
        while start < u.shape[1]:
            room = self.block - self.pending.shape[1]
            piece = u[:, start : start + room].to(self.k.dtype)
            outputs.append(self._feed_piece(piece))
            start += piece.shape[1]
        return torch.cat(outputs, 1) if outputs else u.new_zeros(u.shape[0], 0, u.shape[2]).to(self.k.dtype)

    def _feed_piece(self, piece: torch.Tensor) -> torch.Tensor:
        m = piece.shape[1]
        window = torch.cat([self.pending, piece], 1)  # pending inputs, then the new ones
        channels = self.k.shape[0]
        if m == 1:  # one decoding step: y = sum_s k[s] * window[-1 - s]
            lags = min(window.shape[1], self.k.shape[1])
            local = torch.einsum("bsd,ds->bd", window.flip(1)[:, :lags], self.k[:, :lags])[:, None]
            self.work += lags * channels
        else:
            local = fft_conv_fft(window, self.k)[:, -m:]
            self.work += _fft_work(window.shape[1] + min(window.shape[1], self.k.shape[1]) - 1) * channels
        offset = self.pending.shape[1]
        from_future = self.future[:, offset : offset + m]
        if from_future.shape[1] < m:
            from_future = torch.nn.functional.pad(from_future, (0, 0, 0, m - from_future.shape[1]))
        y = local + from_future
        self.pending = window
        if window.shape[1] == self.block:
            self._flush()
        return y

    def _flush(self) -> None:
        """Fold the pending block's contributions to every later output into ``future``."""
        size = self.block
        horizon = self.k.shape[1] - 1  # an input reaches at most K-1 steps ahead
        if horizon > 0:
            span = size + horizon
            n = fast_length(span + size - 1)
            if self._spectrum is None or self._spectrum[0] != n:  # the filter's spectrum is computed once per size
                self._spectrum = (n, torch.fft.rfft(self.k[:, :span], n=n, dim=1).T)
            spectrum = torch.fft.rfft(self.pending, n=n, dim=1) * self._spectrum[1]
            reach = torch.fft.irfft(spectrum, n=n, dim=1)[:, size:span]  # outputs flushed+size ...
            self.work += _fft_work(span + size - 1, transforms=2) * self.k.shape[0]
        else:
            reach = self.pending.new_zeros(self.pending.shape[0], 0, self.pending.shape[2])
        rest = self.future[:, size:]
        n = max(rest.shape[1], reach.shape[1])
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[1]))  # noqa: E731
        self.future = pad(rest) + pad(reach)
        self.flushed += size
        self.pending = self.pending[:, :0]

    def reorder(self, index: torch.Tensor) -> None:
        self.future = self.future.index_select(0, index)
        self.pending = self.pending.index_select(0, index)

    def snapshot(self):
        return (self.future, self.pending, self.flushed)

    def restore(self, snap) -> None:
        self.future, self.pending, self.flushed = snap


def _fft_work(n: int, transforms: int = 3) -> int:
    """Multiply-adds of a linear convolution of length n by real FFTs (~n log2 n per transform)."""
    size = fast_length(max(n, 1))
    return int(transforms * size * max(1.0, math.log2(size)))


def fft_conv_chunked(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None = None, *, block: int | None = None) -> torch.Tensor:
    """Causal convolution of ``u`` (B, L, D) by ``k`` (D, K), streamed in blocks (overlap-add).

    ``block`` None: ceil(sqrt(L)). Same result as the reference; the form a stream of inputs needs."""
    check_shapes(u, k, skip)
    length = u.shape[1]
    dtype = compute_dtype(u.dtype)
    size = block or max(1, int(length ** 0.5 + 0.999999))
    stream = ConvStream(k[:, : max(1, length)], u.shape[0], block=size, dtype=dtype)
    x = u.to(dtype)
    y = torch.cat([stream.feed(x[:, a : a + size]) for a in range(0, length, size)], 1) if length else x.clone()
    return finish(y, x, skip).to(u.dtype)
