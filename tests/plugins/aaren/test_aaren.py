"""Aaren: the parallel prefix scan over (max, denominator, numerator) equals the step-by-step RNN
update and naive causal softmax attention with the learned query; O(1) state; decoding; config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.plugins.aaren import AarenConfig
from genloom.plugins.aaren import scan as scan_module
from genloom.plugins.aaren.scan import prefix_attention_recurrent, prefix_attention_scan
from genloom.testing import check_backbone, check_kernel

from recurrent_helpers import build_double, err, inputs, trains_and_decodes_on_state

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "aaren.yaml"
NODE = {"name": "aaren", "d_model": 16, "n_layers": 2, "n_heads": 2}
SMALL = ["backbone.d_model=16", "backbone.n_layers=2", "backbone.n_heads=2"]


def build(**overrides):
    return build_double(NODE, **overrides)


def naive_attention(layer, x):
    """Causal softmax attention of the layer's learned query over the keys: an (L, L) masked matrix."""
    B, L, D = x.shape
    k, v = (t.view(B, L, layer.n_heads, layer.head_dim).transpose(1, 2) for t in layer.to_kv(x).chunk(2, -1))
    scores = torch.einsum("hd,bhld->bhl", layer.query.double(), k) / math.sqrt(layer.head_dim)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    weights = torch.softmax(scores[:, :, None, :].expand(B, layer.n_heads, L, L).masked_fill(~causal, float("-inf")), -1)
    return (weights @ v).transpose(1, 2).reshape(B, L, D)


@pytest.mark.parametrize("length", [1, 2, 13, 32])
def test_scan_equals_rnn_update_equals_naive_attention_with_gradients(length):
    layer = build().layers[0].aaren
    x = inputs(length=length)
    results = {}
    for name in ("naive", "reference", "scan"):
        layer.zero_grad()
        if name == "naive":
            out = layer.out_proj(naive_attention(layer, x))
        else:
            with kernels.use("softmax_prefix_scan", name):
                out = layer(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results[name] = (out.detach(), {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in layer.named_parameters()})
    for name in ("reference", "scan"):
        assert err(results[name][0], results["naive"][0]) < 1e-10, name
        for p, grad in results["naive"][1].items():
            assert err(results[name][1][p], grad) < 1e-10, (name, p)


def test_scan_with_an_initial_triple_and_large_scores_equals_the_rnn():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 17, generator=gen, dtype=torch.float64) * 300  # exp would overflow without the running max
    values = torch.randn(2, 3, 17, 4, generator=gen, dtype=torch.float64)
    first_out, first = prefix_attention_recurrent(scores[:, :, :5], values[:, :, :5])
    out_scan, final_scan = prefix_attention_scan(scores[:, :, 5:], values[:, :, 5:], first)
    out_rnn, final_rnn = prefix_attention_recurrent(scores, values)
    assert torch.isfinite(out_scan).all()
    assert err(out_scan, out_rnn[:, :, 5:]) < 1e-10
    for a, b in zip(final_scan, final_rnn):
        assert err(a, b) < 1e-10
    check_kernel("softmax_prefix_scan", "scan", scores.float() / 100, values.float())


def test_a_combine_without_rescaling_to_the_new_maximum_fails(monkeypatch):
    """Broken variant: adding the two sides' sums without exp(m_side - m) rescaling."""
    layer = build().layers[0].aaren
    x = inputs(length=13)
    with torch.no_grad():
        expected = layer.out_proj(naive_attention(layer, x))
        monkeypatch.setattr(scan_module, "_rescale", lambda m_old, m_new: torch.isfinite(m_old).to(m_old.dtype))
        with kernels.use("softmax_prefix_scan", "scan"):
            broken = layer(x)
    assert err(broken, expected) > 1e-3


def test_backbone_contract_and_constant_state():
    check_backbone(NODE, length=11, chunks=(1, 3, 2, 5), tol=1e-10)
    model = build()
    state = model.init_state(2)
    with torch.no_grad():
        model(inputs(length=40), state=state)
    assert [tuple(layer["w"].shape) for layer in state.layers] == [(2, 2, 8)] * 2


def test_padding_and_per_row_rollback():
    model = build()
    h, alt = inputs(batch=3, length=12), inputs(batch=3, length=12, seed=5)
    with torch.no_grad():
        valid = torch.ones(3, 12, dtype=torch.bool)
        valid[1, :3] = False
        valid[2, 6] = False
        out = model(h, valid=valid)
        assert err(out[1, 3:], model(h[1:2, 3:])[0]) < 1e-10
        assert err(torch.cat([out[2, :6], out[2, 7:]]), model(torch.cat([h[2:3, :6], h[2:3, 7:]], 1))[0]) < 1e-10
        assert err(model(h, valid=valid, state=model.init_state(3))[valid], out[valid]) < 1e-10
        state = model.init_state(3)
        model(h[:, :6], state=state)
        model(alt[:, 6:10], state=state)
        state.rollback(torch.tensor([6, 8, 10]))
        following = model(h[:, 10:11], state=state)
        for b, kept in enumerate([0, 2, 4]):
            seq = torch.cat([h[b : b + 1, :6], alt[b : b + 1, 6 : 6 + kept], h[b : b + 1, 10:11]], 1)
            assert err(following[b, 0], model(seq)[0, -1]) < 1e-10


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_heads"):
        AarenConfig(d_model=10, n_heads=4)


def test_shipped_config_trains_and_decoders_run_on_the_state():
    trains_and_decodes_on_state(CONFIG, SMALL)
