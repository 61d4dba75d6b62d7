"""Mamba's hidden attention: alpha is lower-triangular and y = alpha x reproduces the selective
scan (values, final state, gradients) per channel; a product that includes A_j fails; attribution
maps are read off a real Mamba model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.kernels.selective_scan import selective_scan_reference
from genloom.plugins.mamba_hidden_attention.hidden_attention import attribution_maps, hidden_attention, record_hidden_attention
from genloom.testing import check_kernel, tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "mamba-hidden-attention.yaml"


def scan_inputs(batch=2, length=11, channels=5, state_size=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return dict(
        u=r(batch, length, channels), delta=r(batch, length, channels) * 0.5,
        A=-(torch.arange(1, state_size + 1, dtype=torch.float64) * (0.5 + torch.rand(channels, 1, generator=g, dtype=torch.float64))).to(dtype),
        B=r(batch, length, state_size), C=r(batch, length, state_size),
        D=r(channels), z=r(batch, length, channels), delta_bias=r(channels) * 0.5, initial_state=r(batch, channels, state_size),
    )


def err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("length", [1, 11, 23])
def test_alpha_x_reproduces_the_selective_scan_values_state_and_gradients(length):
    inputs = scan_inputs(length=length)
    results = []
    for backend in ("reference", "hidden-attention"):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        with kernels.use("selective_scan", backend) as impl:
            y, final = impl(**leaves, delta_softplus=True)
        ((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + final.sum()).backward()
        results.append((y.detach(), final.detach(), {k: v.grad for k, v in leaves.items()}))
    (y_ref, s_ref, g_ref), (y, s, g) = results
    assert err(y, y_ref) < 1e-10 and err(s, s_ref) < 1e-10
    for name, grad in g_ref.items():
        assert err(g[name], grad) < 1e-10, name


def test_alpha_is_lower_triangular_and_is_the_per_channel_linear_map():
    """Without D, gate and initial state, each channel's scan output is exactly alpha[:, d] @ u[:, :, d]."""
    inputs = scan_inputs()
    core = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    alpha, _, _ = hidden_attention(**core, delta_softplus=True)
    assert alpha.shape == (2, 5, 11, 11)
    assert alpha.triu(1).abs().max() == 0 and alpha.tril().abs().max() > 1e-3
    y_ref, _ = selective_scan_reference(**core, delta_softplus=True)
    for d in range(5):
        assert err(alpha[:, d] @ core["u"][:, :, d, None], y_ref[:, :, d, None]) < 1e-12


def test_a_decay_product_that_includes_the_own_step_fails():
    """Broken variant: prod_{k=j..i} instead of prod_{k=j+1..i}."""
    core = {k: scan_inputs()[k] for k in ("u", "delta", "A", "B", "C")}
    broken, _, _ = hidden_attention(**core, delta_softplus=True, include_own_step=True)
    y_ref, _ = selective_scan_reference(**core, delta_softplus=True)
    assert err(torch.einsum("bdij,bjd->bid", broken, core["u"]), y_ref) > 1e-3


def test_check_kernel_float32():
    inputs = scan_inputs(dtype=torch.float32)
    check_kernel("selective_scan", "hidden-attention", *(inputs[k] for k in ("u", "delta", "A", "B", "C")),
                 D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True, initial_state=inputs["initial_state"])


def test_attribution_maps_of_a_mamba_model_from_the_shipped_config():
    built = tiny_model(CONFIG, ["backbone.d_model=16", "backbone.n_layers=2", "backbone.d_state=4"])
    model = built.model.double().eval()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with kernels.use("selective_scan", "reference"):
            expected = model(ids)
        with record_hidden_attention() as alphas, kernels.use("selective_scan", "hidden-attention"):
            got = model(ids)
    assert err(got, expected) < 1e-10  # the maps are the ones the model actually used
    assert len(alphas) == 2 and alphas[0].shape == (2, 32, 12, 12)  # one per layer, (B, d_inner, L, L)
    per_layer, rollout = attribution_maps(model, ids)
    for m in per_layer + [rollout]:
        assert m.triu(1).abs().max() == 0
        assert torch.allclose(m.sum(-1), torch.ones(2, 12, dtype=m.dtype))
