"""LSSL: the convolutional view (kernel C Abar^k Bbar through fft_conv) equals the step-by-step
recurrence under the bilinear discretisation, with A, B from HiPPO-LegS / LegT."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.lssl.model import LSSLLayer
from genloom.toolkit import ssm


def _layer(measure, channels=3, state=8):
    torch.manual_seed(0)
    layer = LSSLLayer(channels, state, measure, dt_min=1e-2, dt_max=2e-1).double()
    with torch.no_grad():
        layer.skip.normal_()
    return layer


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_convolutional_view_equals_the_recurrence(measure):
    layer = _layer(measure)
    u = torch.randn(2, 41, 3, dtype=torch.float64)
    y_conv = layer(u)
    y_rec, _ = layer.recurrent(u)
    assert (y_conv - y_rec).abs().max() < 1e-5
    # and the float32 path used in training agrees to the same tolerance
    assert (layer.float()(u.float()) - y_rec.float()).abs().max() < 1e-4


def test_kernel_is_c_abar_power_k_bbar_under_the_bilinear_transform():
    layer = _layer("legs")
    dt = torch.exp(layer.log_dt)
    a, b = layer.a.double(), layer.b.double()
    k = layer.kernel(20, torch.float64)
    for h in range(3):
        eye = torch.eye(8, dtype=torch.float64)
        a_bar = torch.linalg.inv(eye - dt[h] / 2 * a) @ (eye + dt[h] / 2 * a)
        b_bar = torch.linalg.inv(eye - dt[h] / 2 * a) @ (dt[h] * b)
        naive = torch.stack([layer.c[h] @ torch.linalg.matrix_power(a_bar, i) @ b_bar for i in range(20)])
        assert torch.allclose(k[h], naive, atol=1e-10)
        assert torch.linalg.eigvals(a_bar).abs().max() < 1  # bilinear keeps the stable HiPPO system stable


def test_hippo_matrices():
    a, b = ssm.hippo("legs", 5)
    n = torch.arange(5, dtype=torch.float64)
    assert torch.allclose(torch.diag(a), -(n + 1)) and torch.equal(torch.triu(a, 1), torch.zeros(5, 5))
    assert torch.allclose(a[3, 1], -torch.sqrt(torch.tensor(7.0 * 3, dtype=torch.float64)))
    assert torch.allclose(b, torch.sqrt(2 * n + 1))
    assert torch.allclose(torch.linalg.eigvals(a).real.sort().values, -(n + 1).flip(0))
    a_t, b_t = ssm.hippo("legt", 5)
    assert torch.allclose(torch.diag(a_t), -(2 * n + 1) / 2) and torch.allclose(b_t, torch.sqrt(2 * n + 1) / 2)
    # above the diagonal the sign alternates with (-1)^(n-k): a[0, 1] > 0, a[1, 3] < 0
    assert torch.allclose(a_t[0, 1], torch.sqrt(torch.tensor(3.0, dtype=torch.float64)) / 2)
    assert torch.allclose(a_t[1, 3], -torch.sqrt(torch.tensor(21.0, dtype=torch.float64)) / 2)
    assert torch.linalg.eigvals(a_t).real.max() < 0
    with pytest.raises(ValueError, match="measure"):
        ssm.hippo("fourier", 4)


def test_broken_variants_fail_the_equivalence():
    layer = _layer("legs")
    u = torch.randn(2, 41, 3, dtype=torch.float64)
    y_rec, _ = layer.recurrent(u)
    # a kernel shifted by one power (C Abar^(k+1) Bbar) -- an off-by-one in the Krylov sequence
    a_bar, b_bar = layer.discrete(torch.float64)
    shifted = ssm.dense_kernel(a_bar, torch.einsum("hnm,hm->hn", a_bar, b_bar), layer.c.double(), 41)
    assert (ssm.dense_convolve(u, shifted, layer.skip) - y_rec).abs().max() > 1e-3
    # forward-Euler discretisation in the kernel instead of bilinear
    dt = torch.exp(layer.log_dt).double()
    euler = torch.eye(8, dtype=torch.float64) + dt[:, None, None] * layer.a.double()
    wrong = ssm.dense_kernel(euler, dt[:, None] * layer.b.double(), layer.c.double(), 41)
    assert (ssm.dense_convolve(u, wrong, layer.skip) - y_rec).abs().max() > 1e-3


def test_the_forecast_steps_see_only_the_lookback_and_the_config_trains():
    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "lssl.yaml")
    backbone = built.model.backbone
    h = torch.randn(2, 36, backbone.d_model)
    out = backbone(h)
    assert out.shape == (2, 48, backbone.d_model)
    changed = h.clone()
    changed[:, 20:] += 5.0
    assert torch.allclose(backbone(changed)[:, :20], out[:, :20], atol=1e-6)  # causal
    assert not torch.allclose(backbone(changed)[:, 36:], out[:, 36:])
