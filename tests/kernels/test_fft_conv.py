"""fft_conv backends agree with the sum-over-lags reference: values and gradients, any length;
the streaming (decoding) path equals the full convolution; the broken circular FFT fails."""

from __future__ import annotations

import pytest
import torch

from genloom.core import kernels
from genloom.kernels.fft_conv import ConvStream, fast_length, fft_conv_chunked, fft_conv_fft, fft_conv_reference
from genloom.testing import check_kernel


def make_inputs(batch=2, length=13, channels=3, filter_length=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, channels, generator=g, dtype=torch.float64).to(dtype)
    # a decaying filter, like the long filters of S4/Hyena, plus noise so every lag matters
    K = filter_length or max(length, 1)
    k = (torch.randn(channels, K, generator=g, dtype=torch.float64) * torch.exp(-0.05 * torch.arange(K, dtype=torch.float64))).to(dtype)
    skip = torch.randn(channels, generator=g, dtype=torch.float64).to(dtype)
    return u, k, skip


def max_err(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


def test_reference_is_the_definition():
    """A hand-computed case: y[t] = sum_s k[s] u[t-s]."""
    u = torch.tensor([[[1.0], [2.0], [-1.0], [0.5]]], dtype=torch.float64)
    k = torch.tensor([[3.0, -1.0, 0.5]], dtype=torch.float64)
    y = fft_conv_reference(u, k)
    expected = [3.0, 6.0 - 1.0, -3.0 - 2.0 + 0.5, 1.5 + 1.0 + 1.0]
    assert y.flatten().tolist() == expected


FORMS = {
    "fft": fft_conv_fft,
    "chunked": fft_conv_chunked,
    "chunked-block-1": lambda u, k, skip=None: fft_conv_chunked(u, k, skip, block=1),
    "chunked-block-4": lambda u, k, skip=None: fft_conv_chunked(u, k, skip, block=4),
    "chunked-block-50": lambda u, k, skip=None: fft_conv_chunked(u, k, skip, block=50),
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("length,filter_length", [(1, None), (2, None), (13, None), (31, None), (64, None), (37, 5), (17, 40)])
def test_forms_equal_reference_values_and_gradients_float64(form, length, filter_length):
    u, k, skip = make_inputs(length=length, filter_length=filter_length)
    weight = torch.linspace(-1, 2, u.numel(), dtype=torch.float64).view_as(u)
    results = []
    for fn in (fft_conv_reference, FORMS[form]):
        leaves = [t.clone().requires_grad_(True) for t in (u, k, skip)]
        y = fn(*leaves)
        (y * weight).sum().backward()
        results.append((y.detach(), [t.grad for t in leaves]))
    (y_ref, g_ref), (y, g) = results
    assert y.shape == u.shape
    assert max_err(y, y_ref) < 1e-10, form
    for a, b in zip(g, g_ref):
        assert max_err(a, b) < 1e-10, form


def test_circular_fft_without_padding_fails_the_agreement_test():
    """The broken variant: an FFT of length L (no zero padding) is a circular convolution, so the
    sequence's tail leaks into its head. The same tolerance the real forms pass must catch it."""
    u, k, _ = make_inputs(length=13)
    assert max_err(fft_conv_fft(u, k), fft_conv_reference(u, k)) < 1e-10
    assert max_err(fft_conv_fft(u, k, pad=False), fft_conv_reference(u, k)) > 1e-3
    # and it is not causal: changing the last input changes the first output
    changed = u.clone()
    changed[:, -1] += 1.0
    assert max_err(fft_conv_fft(changed, k, pad=False)[:, 0], fft_conv_fft(u, k, pad=False)[:, 0]) > 1e-3
    assert max_err(fft_conv_fft(changed, k)[:, :-1], fft_conv_fft(u, k)[:, :-1]) < 1e-12


@pytest.mark.parametrize("block", [1, 3, 8])
def test_stream_token_by_token_and_uneven_pieces_equal_the_full_convolution(block):
    """The decoding path: feeding one token (or an uneven piece) at a time gives the full
    convolution's outputs, while flushes fold each finished block into the future buffer."""
    u, k, _ = make_inputs(length=23)
    full = fft_conv_reference(u, k)
    stream = ConvStream(k, 2, block=block)
    steps = torch.cat([stream.feed(u[:, t : t + 1]) for t in range(23)], 1)
    assert stream.position == 23 and stream.flushed == (23 // block) * block
    assert max_err(steps, full) < 1e-10
    stream = ConvStream(k, 2, block=block)
    bounds = [0, 1, 6, 7, 12, 23]
    pieces = torch.cat([stream.feed(u[:, a:b]) for a, b in zip(bounds, bounds[1:])], 1)
    assert max_err(pieces, full) < 1e-10


def test_stream_snapshot_restore_and_reorder():
    u, k, _ = make_inputs(batch=3, length=12)
    full = fft_conv_reference(u, k)
    stream = ConvStream(k, 3, block=4)
    stream.feed(u[:, :5])
    snap = stream.snapshot()
    stream.feed(torch.randn(3, 6, 3, dtype=torch.float64))  # crosses a flush
    stream.restore(snap)
    assert max_err(stream.feed(u[:, 5:]), full[:, 5:]) < 1e-10
    stream = ConvStream(k, 3, block=4)
    stream.feed(u[:, :6])
    stream.reorder(torch.tensor([2, 0]))
    assert max_err(stream.feed(u[[2, 0], 6:]), full[[2, 0], 6:]) < 1e-10


def test_a_stream_that_skips_the_flush_contribution_fails():
    """Broken variant: dropping the future buffer (as if flushed blocks were forgotten) must fail."""
    u, k, _ = make_inputs(length=12)
    stream = ConvStream(k, 2, block=4)
    outs = []
    for t in range(12):
        stream.future = torch.zeros_like(stream.future)
        outs.append(stream.feed(u[:, t : t + 1]))
    assert max_err(torch.cat(outs, 1), fft_conv_reference(u, k)) > 1e-3


def test_fast_length_is_a_small_prime_product_at_least_n():
    for n in range(1, 200):
        m = fast_length(n)
        assert m >= n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1
    assert fast_length(1025) == 1080


@pytest.mark.parametrize("backend", ["fft", "chunked"])
def test_registered_backends_agree_through_the_dispatcher(backend):
    u, k, skip = make_inputs(batch=2, length=19, dtype=torch.float32)
    check_kernel("fft_conv", backend, u, k, skip=skip)
    assert backend in [name for name, _, reason in kernels.status("fft_conv", device=torch.device("cpu"), dtype=torch.float32) if reason is None]


def test_dispatch_prefers_fft_and_shape_errors_name_the_argument():
    u, k, _ = make_inputs()
    assert kernels.select("fft_conv", device=torch.device("cpu"), dtype=torch.float64).name == "fft"
    with pytest.raises(ValueError, match="k must be"):
        fft_conv_reference(u, k[:2])
    with pytest.raises(ValueError, match="skip must"):
        fft_conv_fft(u, k, torch.ones(5))
