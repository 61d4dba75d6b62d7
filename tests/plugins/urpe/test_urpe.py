"""URPE: the op is (softmax(QK^T/sqrt d + b) * C) V with Toeplitz b and C; with C = 1 it is standard
RPE attention exactly; with a learned C the effective attention matrix is no longer row-stochastic
(and identical tokens become distinguishable by position, which RPE attention cannot do); cached
decoding equals recomputation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.core.pattern import CAUSAL, FULL, sliding_window
from genloom.plugins.urpe import UrpeConfig
from genloom.plugins.urpe.model import effective_attention
from genloom.testing import build, check_backbone, check_decoder, check_model_config, tiny_model
from genloom.toolkit.recurrent import greedy_matches_recomputation

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "urpe.yaml"
NODE = {"name": "urpe", "d_model": 16, "n_layers": 2, "n_heads": 2, "max_distance": 5}
SMALL = ["backbone.d_model=16", "backbone.n_layers=1", "backbone.n_heads=2", "backbone.max_distance=8"]


def err(a, b):
    return (a - b).abs().max().item()


def backbone(randomise=True, **overrides):
    """float64 eval backbone; with ``randomise`` the b and C tables are drawn away from 0 and 1."""
    model, _ = build("backbone", {**NODE, **overrides})
    model = model.double().eval()
    if randomise:
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for block in model.layers:
                block.attn.bias.copy_(torch.randn(block.attn.bias.shape, generator=g, dtype=torch.float64))
                if isinstance(block.attn.gain, torch.nn.Parameter):
                    block.attn.gain.copy_(1 + 0.5 * torch.randn(block.attn.gain.shape, generator=g, dtype=torch.float64))
    return model


def explicit(q, k, v, b, c, allowed, M):
    """The formula written out with the Toeplitz matrices built entry by entry."""
    L = q.shape[2]
    H = q.shape[1]
    B_mat = torch.zeros(H, L, L, dtype=q.dtype)
    C_mat = torch.zeros(H, L, L, dtype=q.dtype)
    for i in range(L):
        for j in range(L):
            d = max(-M, min(M, i - j)) + M
            B_mat[:, i, j], C_mat[:, i, j] = b[:, d], c[:, d]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + B_mat
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (probs * C_mat) @ v, probs * C_mat


def _case(L=9, M=3):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, L, 4, generator=g, dtype=torch.float64) for _ in range(3))
    b = torch.randn(2, 2 * M + 1, generator=g, dtype=torch.float64)
    c = 1 + 0.5 * torch.randn(2, 2 * M + 1, generator=g, dtype=torch.float64)
    return q, k, v, b, c


@pytest.mark.parametrize("pattern", [CAUSAL, FULL, sliding_window(3)], ids=["causal", "full", "window"])
def test_op_is_the_formula(pattern):
    q, k, v, b, c = _case()
    got = kernels.call("urpe_attention", q, k, v, b, c, pattern=pattern)
    expect, _ = explicit(q, k, v, b, c, pattern.dense(9), 3)
    assert err(got, expect) < 1e-12


def test_c_equal_one_is_standard_rpe_attention_exactly():
    q, k, v, b, _ = _case()
    ones = torch.ones_like(b)
    urpe = kernels.call("urpe_attention", q, k, v, b, ones, pattern=CAUSAL)
    rpe, _ = explicit(q, k, v, b, ones, CAUSAL.dense(9), 3)
    assert err(urpe, rpe) < 1e-12
    # with b = 0 too it is the core's attention op (the reference backend) to rounding
    with kernels.use("attention", "reference") as ref:
        assert err(kernels.call("urpe_attention", q, k, v, torch.zeros_like(b), ones), ref(q, k, v, pattern=CAUSAL)) < 1e-14
    # the whole backbone: universal with C = 1 gives exactly the RPE model's outputs
    universal, plain = backbone(), backbone(universal=False)
    plain.load_state_dict(universal.state_dict(), strict=False)
    with torch.no_grad():
        for block in universal.layers:
            block.attn.gain.fill_(1.0)
        h = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        assert torch.equal(universal(h), plain(h))


def row_sum_gap(attention) -> float:
    return (attention.sum(-1) - 1).abs().max().item()


def test_effective_attention_is_not_row_stochastic():
    model = backbone()
    layer = model.layers[0].attn
    x = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        A = effective_attention(layer, x)
        assert row_sum_gap(A) > 1e-2
        assert (A.triu(1) == 0).all()  # still causal
        # the matrix read off the op is the formula's A * C
        q, k, _ = layer.qkv(x).view(2, 10, 3, 2, 8).unbind(2)
        values = torch.zeros(2, 2, 10, 1, dtype=torch.float64)
        _, expect = explicit(q.transpose(1, 2), k.transpose(1, 2), values, layer.bias, layer.gain, CAUSAL.dense(10), 5)
        assert err(A, expect) < 1e-12
        layer.gain.fill_(1.0)
        assert row_sum_gap(effective_attention(layer, x)) < 1e-12  # C = 1: row-stochastic again


def test_broken_variant_c_inside_the_softmax_stays_row_stochastic():
    """Multiplying the scores by C before the softmax is not URPE: the check above catches it."""
    q, k, v, b, c = _case()
    L, M = 9, 3
    index = (torch.arange(L)[:, None] - torch.arange(L)[None]).clamp(-M, M) + M
    scores = q @ k.transpose(-1, -2) / 2.0 + b[:, index]
    inside = (scores * c[:, index]).masked_fill(~CAUSAL.dense(L), float("-inf")).softmax(-1)
    assert row_sum_gap(inside) < 1e-12  # fails the not-row-stochastic check
    identity = torch.eye(L, dtype=torch.float64).expand(2, 2, L, L)
    assert row_sum_gap(kernels.call("urpe_attention", q, k, identity, b, c)) > 1e-2


def test_identical_tokens_are_told_apart_only_by_urpe():
    """The paper's counterexample: with every token identical, RPE attention averages identical
    values, so every position gets the same output; URPE's C makes the output depend on position."""
    x = torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64).expand(1, 12, 16)
    with torch.no_grad():
        rpe = backbone(universal=False)(x)
        urpe = backbone()(x)
    assert err(rpe, rpe[:, :1].expand_as(rpe)) < 1e-12
    assert err(urpe, urpe[:, :1].expand_as(urpe)) > 1e-3


@pytest.mark.parametrize("chunks", [(1,) * 14, (5, 1, 8)])
def test_cached_decoding_equals_recompute_past_the_clipping_distance(chunks):
    model = backbone()
    h = torch.randn(2, 14, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)  # 14 > max_distance 5
    with torch.no_grad():
        full = model(h)
        state = model.init_state(2, 4)
        outs, at = [], 0
        for n in chunks:
            outs.append(model(h[:, at : at + n], state=state))
            at += n
    assert err(torch.cat(outs, 1), full) < 1e-10


@pytest.mark.parametrize("universal", [True, False])
def test_backbone_contract(universal):
    check_backbone({**NODE, "universal": universal}, length=11, chunks=(1, 3, 2, 5), tol=1e-10)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_heads"):
        UrpeConfig(d_model=10, n_heads=4)


def test_shipped_config_trains_and_decodes():
    torch.manual_seed(0)
    check_model_config(CONFIG, SMALL, batch={"ids": torch.randint(0, 256, (2, 17))})
    built = tiny_model(CONFIG, SMALL, seed=0)
    built.model.double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for block in built.model.backbone.layers:
            block.attn.bias.normal_(generator=g)
            block.attn.gain.normal_(1.0, 0.5, generator=g)
    greedy_matches_recomputation(built, [[100, 101, 102, 103, 104, 105, 106, 107, 108, 109], [50, 51]], max_new_tokens=6)
    for decoder in ({"name": "sampling"}, {"name": "beam", "num_beams": 2}):
        check_decoder(built, decoder, max_new_tokens=4)
