"""The ``fft_conv`` op: causal long convolution of (B, L, D) inputs by (D, K) filters.

``backend(u, k, skip=None) -> y (B, L, D)``, ``y[t] = sum_{s <= t} k[:, s] * u[t - s] + skip * u[t]``.

- ``reference`` (:mod:`.reference`): the sum over lags, the definition, O(L * K).
- ``fft`` (:mod:`.fft`): zero-padded real FFTs, O(L log L).
- ``chunked`` (:mod:`.streaming`): blocks fed one after another through :class:`ConvStream`
  (overlap-add with a buffer of future contributions); the same stream is the decoding path
  (FutureFill): ``ConvStream.feed`` one token at a time costs O(block) plus one FFT per block.

Op ``fft_conv_stream`` (``backend(k, batch_size, block) -> ConvStream``) gives the decoding path:
``futurefill`` (flush every ``block`` inputs) or ``reference`` (never flush: the naive direct sum).

Model code reaches the backends through ``genloom.core.kernels.call("fft_conv", u, k, skip=...)``.
"""

from __future__ import annotations

import torch

from genloom.kernels.fft_conv.fft import fast_length, fft_conv_fft
from genloom.kernels.fft_conv.reference import fft_conv_reference
from genloom.kernels.fft_conv.streaming import ConvStream, fft_conv_chunked

__all__ = ["make_reference", "make_fft", "make_chunked", "fft_conv_reference", "fft_conv_fft", "fft_conv_chunked", "ConvStream", "fast_length"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class FFTConvBackend:
    """One backend of the op: ``supports(device, dtype, **kw)`` and the call."""

    name = "reference"
    function = staticmethod(fft_conv_reference)

    def supports(self, device=None, dtype=None, **kw) -> str | None:
        if dtype is not None and dtype not in _FLOATS:
            return f"fft_conv needs a floating-point dtype, got {dtype}"
        return None

    def __call__(self, u, k, skip=None):
        return type(self).function(u, k, skip)

    def __repr__(self) -> str:
        return f"fft_conv[{self.name}]"


class FFTBackend(FFTConvBackend):
    name = "fft"
    function = staticmethod(fft_conv_fft)


class ChunkedBackend(FFTConvBackend):
    name = "chunked"
    function = staticmethod(fft_conv_chunked)


class StreamBackend:
    """Op ``fft_conv_stream``: ``backend(k, batch_size, block=64) -> ConvStream``, a decoding-time
    convolution fed piece by piece. ``futurefill`` flushes every ``block`` inputs into the future
    buffer; ``reference`` never flushes (every output is the direct sum over the whole history:
    the naive O(t)-per-token baseline)."""

    def __init__(self, name: str):
        self.name = name

    def supports(self, device=None, dtype=None, **kw) -> str | None:
        return None

    def __call__(self, k, batch_size: int, block: int = 64) -> ConvStream:
        return ConvStream(k, batch_size, block=block if self.name == "futurefill" else 1 << 40)

    def __repr__(self) -> str:
        return f"fft_conv_stream[{self.name}]"


def make_stream_reference(config=None, ctx=None) -> StreamBackend:
    """Factory of the ``fft_conv_stream`` ``reference`` backend (direct sums, never flushes)."""
    return StreamBackend("reference")


def make_stream_futurefill(config=None, ctx=None) -> StreamBackend:
    """Factory of the ``fft_conv_stream`` ``futurefill`` backend."""
    return StreamBackend("futurefill")


def make_reference(config=None, ctx=None) -> FFTConvBackend:
    """Factory of the ``reference`` backend."""
    return FFTConvBackend()


def make_fft(config=None, ctx=None) -> FFTBackend:
    """Factory of the ``fft`` backend."""
    return FFTBackend()


def make_chunked(config=None, ctx=None) -> ChunkedBackend:
    """Factory of the ``chunked`` backend."""
    return ChunkedBackend()
