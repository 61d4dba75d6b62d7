"""SpaceTime: a companion SSM whose last column holds AR coefficients reproduces an AR(p) process
exactly; the fast kernel equals naive matrix powers; the closed loop feeds back its own predictions."""

from pathlib import Path

import torch

from genloom.plugins.spacetime.model import ClosedLoopSSM, CompanionSSM
from genloom.toolkit import ssm


def _ar(phi, noise):
    x = torch.zeros_like(noise)
    for t in range(len(noise)):
        x[t] = noise[t] + sum(phi[i] * x[t - 1 - i] for i in range(len(phi)) if t - 1 - i >= 0)
    return x


def test_companion_ssm_with_ar_coefficients_reproduces_an_ar_process_exactly():
    torch.manual_seed(0)
    phi = torch.tensor([0.6, -0.25, 0.1, 0.05], dtype=torch.float64)
    p = len(phi)
    layer = CompanionSSM(1, p).double()
    last = torch.zeros(1, p, dtype=torch.float64)
    last[0, -1] = 1.0
    with torch.no_grad():
        layer.a.copy_(phi.flip(0)[None])  # last column: a_p = phi_1, ..., a_1 = phi_p
        layer.b.copy_(last)
        layer.c.copy_(last)
        layer.skip.zero_()
    noise = torch.randn(80, dtype=torch.float64)
    expected = _ar(phi, noise)
    assert (layer(noise[None, :, None])[0, :, 0] - expected).abs().max() < 1e-10  # convolution view
    assert (layer.recurrent(noise[None, :, None])[0][0, :, 0] - expected).abs().max() < 1e-10  # recurrence
    # broken variant: the coefficients in the wrong order (a = phi instead of phi reversed)
    with torch.no_grad():
        layer.a.copy_(phi[None])
    assert (layer(noise[None, :, None])[0, :, 0] - expected).abs().max() > 1e-2


def test_fast_kernel_equals_naive_matrix_powers():
    torch.manual_seed(1)
    a = torch.randn(3, 6, dtype=torch.float64) * 0.3
    b, c = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    matrices = ssm.companion(a)
    for length in (1, 7, 31, 64):
        fast = ssm.companion_kernel(a, b, c, length)
        naive = torch.stack([torch.stack([c[h] @ torch.linalg.matrix_power(matrices[h], k) @ b[h] for k in range(length)]) for h in range(3)])
        assert (fast - naive).abs().max() < 1e-5 * max(1.0, naive.abs().max().item())
    # float32 path (training) agrees too
    assert (ssm.companion_kernel(a.float(), b.float(), c.float(), 31) - naive[:, :31].float()).abs().max() < 1e-4 * naive.abs().max()
    # broken variant: dropping the (I - A^L) correction leaves a wrong (aliased) kernel
    length = 31
    z = torch.exp(-2j * torch.pi * torch.arange(length, dtype=torch.float64) / length)
    resolvent = torch.stack([torch.linalg.solve(torch.eye(6, dtype=torch.complex128) - zj * matrices.to(torch.complex128), b.to(torch.complex128)[..., None])[..., 0] for zj in z])
    aliased = torch.fft.ifft(torch.einsum("hp,lhp->hl", c.to(torch.complex128), resolvent), dim=-1).real
    assert (aliased - naive[:, :length]).abs().max() > 1e-3


def test_closed_loop_feeds_its_own_predictions_as_inputs():
    torch.manual_seed(2)
    layer = ClosedLoopSSM(4, 5, init_scale=0.5).double()
    z = torch.randn(2, 20, 4, dtype=torch.float64)
    y, fed = layer(z, 7)
    assert y.shape == (2, 27, 4) and fed.shape == (2, 7, 4)
    # the outputs are the open-loop recurrence over the lookback followed by the fed-back inputs ...
    reference, _ = layer.recurrent(torch.cat([z, fed], 1))
    assert (y - reference).abs().max() < 1e-10
    # ... and each fed-back input is the feedback map of the state reached so far
    for t in range(7):
        _, state = layer.recurrent(torch.cat([z, fed[:, :t]], 1))
        assert torch.allclose(fed[:, t], torch.einsum("hp,bhp->bh", layer.feedback, state), atol=1e-10)
    # broken variant: an open loop (zero inputs after the lookback) gives a different forecast
    open_loop, _ = layer.recurrent(torch.cat([z, torch.zeros_like(fed)], 1))
    assert (open_loop[:, 20:] - y[:, 20:]).abs().max() > 1e-3


def test_forecast_depends_only_on_the_lookback_and_the_config_trains():
    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "spacetime.yaml")
    backbone = built.model.backbone
    h = torch.randn(2, 36, backbone.d_model)
    out = backbone(h)
    assert out.shape == (2, 48, backbone.d_model)
    changed = h.clone()
    changed[:, 20:] += 5.0
    assert torch.allclose(backbone(changed)[:, :20], out[:, :20], atol=1e-5)  # causal encoder and decoder
    assert not torch.allclose(backbone(changed)[:, 36:], out[:, 36:])
