"""The ``reference`` attention backend is the definition: it computes in the input's precision."""

import math

import torch

from genloom.core import kernels
from genloom.core.pattern import CAUSAL


def _causal_attention_float64(q, k, v):
    L = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v


def test_reference_follows_float64_inputs():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 16, dtype=torch.float64) for _ in range(3))
    with kernels.use("attention", "reference") as ref:
        got = ref(q, k, v, pattern=CAUSAL)
    assert got.dtype == torch.float64
    expect = _causal_attention_float64(q, k, v)
    torch.testing.assert_close(got, expect, atol=1e-13, rtol=1e-13)
    # the broken variant (computing in float32 and casting back) misses that bound by far
    rounded = _causal_attention_float64(q.float().double(), k.float().double(), v.float().double())
    assert (rounded - expect).abs().max() > 1e-9


def test_reference_keeps_half_precision_inputs_in_float32_internally():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8).to(torch.bfloat16) for _ in range(3))
    with kernels.use("attention", "reference") as ref:
        got = ref(q, k, v, pattern=CAUSAL)
    assert got.dtype == torch.bfloat16
    expect = _causal_attention_float64(q.double(), k.double(), v.double()).to(torch.bfloat16)
    torch.testing.assert_close(got, expect, atol=1e-2, rtol=1e-2)
