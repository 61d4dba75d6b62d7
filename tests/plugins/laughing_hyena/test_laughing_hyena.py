"""Laughing Hyena: a distilled modal SSM's O(1)-per-token recurrence equals convolution with its
impulse response, the filter approximation error falls as the order grows, and both filter kinds
keep the incremental-state contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.plugins.laughing_hyena import LaughingHyenaConfig
from genloom.plugins.laughing_hyena.distill import distill_backbone, fit_orders
from genloom.testing import check_backbone

from recurrent_helpers import build_double, err, inputs, trains_and_decodes_on_state

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "laughing-hyena.yaml"
NODE = {"name": "laughing-hyena", "d_model": 16, "n_layers": 2, "filter_heads": 2, "filter_hidden": 16, "filter_features": 4, "max_length": 64}
SMALL = ["backbone.d_model=16", "backbone.n_layers=1", "backbone.filter_heads=2", "backbone.filter_hidden=8", "backbone.max_length=64"]


def build(**overrides):
    return build_double(NODE, **overrides)


@pytest.fixture(scope="module")
def distilled():
    teacher = build()
    student, errors = distill_backbone(teacher, order=8, length=64, steps=20)
    return teacher, student.double().eval(), errors


def test_modal_recurrence_equals_convolution_with_its_impulse_response(distilled):
    """O(1)-per-token generation (the modal recurrence through linear_recurrence, token by token)
    == the full forward that convolves with the SSM's impulse response (fft_conv), float64."""
    _, student, _ = distilled
    h = inputs(length=20)
    with torch.no_grad():
        full = student(h)
        state = student.init_state(2)
        steps = torch.cat([student(h[:, t : t + 1], state=state) for t in range(20)], 1)
    assert err(steps, full) < 1e-10
    operator = student.layers[0].operator
    impulse = torch.zeros(1, 30, 16, dtype=torch.float64)
    impulse[:, 0] = 1.0
    with torch.no_grad():
        q, k, v, g = operator.modal_inputs(impulse, None)
        response = kernels.call("linear_recurrence", q, k, v, g)[0][0, :, :, 0].real
        kernel = operator.channel_kernel(30, torch.float64)
    assert err(response, kernel) < 1e-12


def test_an_impulse_response_off_by_one_step_fails(distilled):
    """Broken variant: convolving with Re(sum R lambda^(t+1)) instead of lambda^t."""
    _, student, _ = distilled
    operator = student.layers[0].operator
    impulse = torch.zeros(1, 30, 16, dtype=torch.float64)
    impulse[:, 0] = 1.0
    with torch.no_grad():
        q, k, v, g = operator.modal_inputs(impulse, None)
        response = kernels.call("linear_recurrence", q, k, v, g)[0][0, :, :, 0].real
        shifted = operator.channel_kernel(31, torch.float64)[:, 1:]
    assert err(response, shifted) > 1e-3


def test_approximation_error_falls_as_the_order_grows():
    target = build().layers[0].operator.filter.kernel(64, torch.float64).detach()
    fits = fit_orders(target, [1, 2, 4, 8, 16], steps=15)
    errors = torch.stack([fits[d]["error"] for d in (1, 2, 4, 8, 16)])  # (orders, heads)
    assert bool((errors[1:] <= errors[:-1] + 1e-12).all()), errors
    assert bool((errors[-1] < 1e-2 * errors[0]).all()), errors
    assert float(errors[-1].max()) < 1e-2


def test_distilled_model_stays_close_to_its_teacher(distilled):
    teacher, student, errors = distilled
    h = inputs(length=40)
    with torch.no_grad():
        gap = err(student(h), teacher(h)) / teacher(h).abs().max().item()
    assert float(errors.max()) < 0.1 and gap < 1e-2, (errors, gap)
    # weights other than the filters are the teacher's
    assert torch.equal(student.layers[1].operator.in_proj.weight, teacher.layers[1].operator.in_proj.weight)


@pytest.mark.parametrize("filter_kind", ["implicit", "modal"])
def test_backbone_contract(filter_kind):
    check_backbone({**NODE, "filter": filter_kind, "order": 4}, length=11, chunks=(1, 3, 2, 5), tol=1e-10)


def test_state_sizes_modal_constant_implicit_growing_and_padding():
    modal, implicit = build(filter="modal", order=4), build()
    h = inputs(batch=3, length=12)
    with torch.no_grad():
        state = modal.init_state(3)
        modal(h, state=state)
        assert [tuple(layer["s"].shape) for layer in state.layers] == [(3, 16, 4, 1)] * 2
        cache = implicit.init_state(3, capacity=4)
        implicit(h, state=cache)
        assert cache.used == 12  # the implicit filter needs the whole history
        valid = torch.ones(3, 12, dtype=torch.bool)
        valid[0, :3] = False
        valid[2, 5] = False
        for model in (modal, implicit):
            out = model(h, valid=valid)
            assert err(out[0, 3:], model(h[:1, 3:])[0]) < 1e-10
            assert err(torch.cat([out[2, :5], out[2, 6:]]), model(torch.cat([h[2:3, :5], h[2:3, 6:]], 1))[0]) < 1e-10
            stateful = model(h, valid=valid, state=model.init_state(3))
            assert err(stateful[0, 3:], out[0, 3:]) < 1e-10


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="filter must be one of"):
        LaughingHyenaConfig(filter="fft")
    with pytest.raises(ValueError, match="filter_heads"):
        LaughingHyenaConfig(d_model=10, filter_heads=4)


@pytest.mark.parametrize("filter_kind", ["implicit", "modal"])
def test_shipped_config_trains_and_decoders_run_on_the_state(filter_kind):
    overrides = SMALL + [f"backbone.filter={filter_kind}", "backbone.order=4"]
    trains_and_decodes_on_state(CONFIG, overrides, max_new_tokens=5, decoders=({"name": "beam", "num_beams": 2},), decoder_tokens=3)
