"""GSS: the DSS layer by FFT convolution == the direct O(L^2) convolution == the modal recurrence,
the layer is causal (and a circular FFT breaks that), the state contract, decoding, config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.kernels import fft_conv as fft_conv_package
from genloom.plugins.gss import GSSConfig
from genloom.testing import check_backbone

from recurrent_helpers import assert_rollback_per_row, build_double, err, inputs, trains_and_decodes_on_state

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "gss.yaml"
SMALL = ["backbone.d_model=16", "backbone.n_layers=2", "backbone.ssm_width=8", "backbone.state_size=4"]
NODE = {"name": "gss", "d_model": 16, "n_layers": 2, "ssm_width": 8, "state_size": 4}


def build(**overrides):
    return build_double(NODE, **overrides)


@pytest.mark.parametrize("length", [1, 13, 31])
def test_dss_by_fft_equals_direct_convolution_and_the_modal_recurrence(length):
    """Outputs and the gradients of every DSS parameter agree across fft, chunked, direct
    (reference) convolution and the recurrence through linear_recurrence, float64."""
    dss = build().layers[0].dss
    u = torch.randn(2, length, 8, generator=torch.Generator().manual_seed(length), dtype=torch.float64)
    results = {}
    for name in ("reference", "fft", "chunked", "recurrence"):
        dss.zero_grad()
        if name == "recurrence":
            y = dss.recur(u, None, None)[0]
        else:
            with kernels.use("fft_conv", name):
                y = dss.convolve(u)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results[name] = (y.detach(), {n: p.grad.clone() for n, p in dss.named_parameters()})
    ref_y, ref_g = results["reference"]
    for name, (y, grads) in results.items():
        assert err(y, ref_y) < 1e-10, name
        for p, grad in ref_g.items():
            assert err(grads[p], grad) < 1e-10, (name, p)


def test_the_kernel_is_the_recurrences_impulse_response():
    dss = build().layers[0].dss
    impulse = torch.zeros(1, 20, 8, dtype=torch.float64)
    impulse[:, 0] = 1.0
    with torch.no_grad():
        response = dss.recur(impulse, None, None)[0][0].T  # (H, L)
        kernel = dss.kernel(20, torch.float64)
        kernel[:, 0] += dss.skip.double()
    assert err(response, kernel) < 1e-12
    assert kernel[:, 1:].abs().max() > 1e-3  # a real long filter, not just the skip


def _future_leak(model, h, cut=7):
    """Largest change of outputs before ``cut`` when only inputs from ``cut`` on change."""
    changed = h.clone()
    changed[:, cut:] += torch.randn_like(changed[:, cut:])
    with torch.no_grad():
        return err(model(changed)[:, :cut], model(h)[:, :cut])


def test_gss_is_causal_and_a_circular_fft_breaks_it(monkeypatch):
    """Broken variant: an FFT without zero padding (a circular convolution) lets the future in."""
    model = build()
    h = inputs(length=16)
    with kernels.use("fft_conv", "fft"):
        assert _future_leak(model, h) < 1e-12
        monkeypatch.setattr(fft_conv_package.FFTBackend, "function", staticmethod(lambda u, k, skip=None: fft_conv_package.fft_conv_fft(u, k, skip, pad=False)))
        assert _future_leak(model, h) > 1e-3


def test_backbone_contract():
    check_backbone(NODE, length=11, chunks=(1, 3, 2, 5), tol=1e-10)


def test_padding_holes_and_per_row_rollback():
    model = build()
    h, alt = inputs(batch=3, length=12), inputs(batch=3, length=12, seed=5)
    with torch.no_grad():
        valid = torch.ones(3, 12, dtype=torch.bool)
        valid[1, :4] = False
        valid[2, 6] = False  # a hole: that step does not exist for row 2
        out = model(h, valid=valid)
        assert err(out[1, 4:], model(h[1:2, 4:])[0]) < 1e-10
        without_hole = model(torch.cat([h[2:3, :6], h[2:3, 7:]], 1))[0]
        assert err(torch.cat([out[2, :6], out[2, 7:]]), without_hole) < 1e-10
        assert_rollback_per_row(model, h, alt, [0, 3, 4], "s")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="ssm_width"):
        GSSConfig(ssm_width=0)
    with pytest.raises(ValueError, match="dt_min"):
        GSSConfig(dt_min=0.5, dt_max=0.1)


def test_shipped_config_trains_and_decoders_run_on_the_state():
    trains_and_decodes_on_state(CONFIG, SMALL, backbone="GSS")
