"""GateLoop: the recurrent mode, the associative-scan parallel mode and the surrogate-attention
mode give the same outputs (and gradients); the state contract; decoding; config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.plugins.gateloop import GateLoopConfig
from genloom.plugins.gateloop.scan import associative_scan, associative_scan_gateloop
from genloom.testing import check_backbone

from recurrent_helpers import assert_rollback_per_row, build_double, err, inputs, trains_and_decodes_on_state

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "gateloop.yaml"
SMALL = ["backbone.d_model=16", "backbone.n_layers=2", "backbone.n_heads=2"]


NODE = {"name": "gateloop", "d_model": 16, "n_layers": 2, "n_heads": 2}


def build(**overrides):
    return build_double(NODE, **overrides)


def surrogate_attention(q, k, v, g, include_own_step=False):
    """The paper's O(l^2) mode written out: y_n = Re(sum_{m <= n} (q_n * M[n, m]) . k_m v_m) with
    M[n, m] = prod_{m < j <= n} a_j, a product taken step by step (no cumulative sums).
    ``include_own_step``: the broken variant that also multiplies by a_m."""
    a = torch.exp(g)
    B, H, L, K = q.shape
    y = torch.zeros(B, H, L, v.shape[-1], dtype=a.dtype)
    for n in range(L):
        for m in range(n + 1):
            M = torch.ones(B, H, K, dtype=a.dtype)
            for j in range(m if include_own_step else m + 1, n + 1):
                M = M * a[:, :, j]
            y[:, :, n] += ((q[:, :, n] * M * k[:, :, m]).sum(-1))[..., None] * v[:, :, m]
    return y.real


def _mixer_inputs(model, h):
    mixer = model.layers[0].mixer
    return mixer.recurrence_inputs(model.layers[0].norm1(h))


def test_three_modes_of_one_layer_are_equal():
    """Recurrent (the op's reference), associative scan and surrogate attention (written out,
    and the op's parallel backend) on one layer's real data-controlled inputs, float64."""
    model = build()
    with torch.no_grad():
        q, k, v, g = _mixer_inputs(model, inputs(length=9))
        with kernels.use("linear_recurrence", "reference"):
            recurrent, final = kernels.call("linear_recurrence", q, k, v, g)
        scan, scan_final = associative_scan_gateloop(q, k, v, g)
        with kernels.use("linear_recurrence", "parallel"):
            masked, _ = kernels.call("linear_recurrence", q, k, v, g)
        written_out = surrogate_attention(q, k, v, g)
    assert err(scan, recurrent) < 1e-10 and err(scan_final, final) < 1e-10
    assert err(masked, recurrent) < 1e-10
    assert err(written_out, recurrent.real) < 1e-10
    assert g.imag.abs().max() > 1e-3 and g.real.std() > 1e-3  # the transitions really are complex and data-controlled


def test_broken_modes_fail_the_equivalence():
    """Broken variants: a mask that also multiplies by a_m (off by one), and a scan whose
    operator composes the maps in the wrong order."""
    model = build()
    with torch.no_grad():
        q, k, v, g = _mixer_inputs(model, inputs(length=9))
        recurrent, _ = kernels.call("linear_recurrence", q, k, v, g)
        assert err(surrogate_attention(q, k, v, g, include_own_step=True), recurrent.real) > 1e-3
        A, Bm = torch.exp(g), k[..., :, None].to(g.dtype) * v[..., None, :].to(g.dtype)
        L, offset = A.shape[2], 1
        while offset < L:  # (A1, B1) . (A2, B2) = (A1 A2, A1 B2 + B1): wrong order
            A_prev = torch.nn.functional.pad(A[:, :, :-offset], (0, 0, offset, 0), value=1.0)
            B_prev = torch.nn.functional.pad(Bm[:, :, :-offset], (0, 0, 0, 0, offset, 0))
            Bm = A_prev[..., None] * Bm + B_prev
            A = A * A_prev
            offset *= 2
        wrong = torch.einsum("bhlk,bhlkv->bhlv", q.to(g.dtype), Bm)
        assert err(wrong, recurrent) > 1e-3
        assert err(torch.einsum("bhlk,bhlkv->bhlv", q.to(g.dtype), associative_scan(torch.exp(g), k[..., :, None].to(g.dtype) * v[..., None, :].to(g.dtype))), recurrent) < 1e-10


@pytest.mark.parametrize("length", [1, 2, 7, 16])
def test_associative_scan_any_length_with_an_initial_state(length):
    gen = torch.Generator().manual_seed(length)
    q, k = torch.randn(2, 2, length, 3, generator=gen, dtype=torch.float64), torch.randn(2, 2, length, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, length, 4, generator=gen, dtype=torch.float64)
    g = torch.complex(-torch.rand(2, 2, length, 3, generator=gen, dtype=torch.float64), torch.randn(2, 2, length, 3, generator=gen, dtype=torch.float64))
    h0 = torch.randn(2, 2, 3, 4, generator=gen, dtype=torch.float64).to(torch.complex128)
    y, s = associative_scan_gateloop(q, k, v, g, h0)
    y_ref, s_ref = kernels.call("linear_recurrence", q, k, v, g, initial_state=h0)
    assert err(y, y_ref) < 1e-10 and err(s, s_ref) < 1e-10


def test_backbone_modes_agree_outputs_and_gradients():
    h = inputs()
    results = {}
    for name, mode, backend in [("recurrent", "op", "reference"), ("surrogate", "op", "parallel"), ("chunkwise", "op", "chunkwise"), ("scan", "associative-scan", "reference")]:
        model = build(mode=mode)
        with kernels.use("linear_recurrence", backend):
            out = model(h)
            (out * torch.linspace(-1, 1, 16, dtype=out.dtype)).sum().backward()
        results[name] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    ref_out, ref_grads = results["recurrent"]
    for name, (out, grads) in results.items():
        assert err(out, ref_out) < 1e-10, name
        for p, grad in ref_grads.items():
            assert err(grads[p], grad) < 1e-10, (name, p)


@pytest.mark.parametrize("mode", ["op", "associative-scan"])
def test_backbone_contract(mode):
    check_backbone({"name": "gateloop", "d_model": 16, "n_layers": 2, "n_heads": 2, "mode": mode}, length=11, chunks=(1, 3, 2, 5), tol=1e-10)


def test_padding_and_per_row_rollback():
    model = build()
    h, alt = inputs(batch=3, length=12), inputs(batch=3, length=12, seed=5)
    with torch.no_grad():
        valid = torch.ones(3, 12, dtype=torch.bool)
        valid[1, :5] = False
        alone = model(h[1:2, 5:])
        assert err(model(h, valid=valid)[1, 5:], alone[0]) < 1e-10
        state = model.init_state(3)
        assert err(model(h, valid=valid, state=state)[1, 5:], alone[0]) < 1e-10
        assert_rollback_per_row(model, h, alt, [0, 2, 4], "h")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="mode must be one of"):
        GateLoopConfig(mode="fft")
    with pytest.raises(ValueError, match="n_heads"):
        GateLoopConfig(d_model=10, n_heads=4)


def test_shipped_config_trains_and_decoders_run_on_the_state():
    trains_and_decodes_on_state(CONFIG, SMALL, backbone="GateLoop")
