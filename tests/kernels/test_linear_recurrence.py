"""linear_recurrence backends agree with the step-by-step reference for scalar, per-channel and
complex decays: outputs, final states and gradients; splitting through initial_state; the Triton
kernel under the interpreter (subprocess) and on CUDA (marked gpu)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.kernels.linear_recurrence import (
    linear_recurrence_chunkwise,
    linear_recurrence_parallel,
    linear_recurrence_reference,
    linear_recurrence_step,
    make_triton,
)
from genloom.kernels.linear_recurrence import triton_kernel
from genloom.testing import check_kernel


def make_inputs(decay="scalar", batch=2, heads=2, length=13, key=3, value=4, dtype=torch.float64, device="cpu", seed=0, init=True):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = randn(batch, heads, length, key), randn(batch, heads, length, key), randn(batch, heads, length, value)
    if decay == "scalar":
        g = -torch.rand(batch, heads, length, generator=gen, dtype=torch.float64) * 0.5
    elif decay == "channel":
        g = -torch.rand(batch, heads, length, key, generator=gen, dtype=torch.float64) * 0.5
    else:  # complex: |a| < 1 and a rotation
        g = torch.complex(-torch.rand(batch, heads, length, key, generator=gen, dtype=torch.float64) * 0.5, randn(batch, heads, length, key))
    state = randn(batch, heads, key, value) if init else None
    cast = (lambda t: t.to(device=device, dtype=dtype if not t.is_complex() else t.dtype)) if dtype != torch.float64 else (lambda t: t.to(device))
    out = dict(q=cast(q), k=cast(k), v=cast(v), g=cast(g))
    if decay == "complex" and dtype != torch.float64:
        out["g"] = g.to(device=device, dtype=torch.complex64)
    out["initial_state"] = cast(state) if state is not None else None
    return out


def run_with_grads(fn, inputs):
    leaves = {n: (t.detach().clone().requires_grad_(True) if t is not None else None) for n, t in inputs.items()}
    y, final = fn(**leaves)
    wy = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view(y.shape).to(y.device)
    ws = torch.linspace(1, -2, final.numel(), dtype=torch.float64).view(final.shape).to(final.device)
    loss = (y * wy).real.sum() + (final * ws).real.sum() if y.is_complex() else (y * wy.to(y.dtype)).sum() + (final * ws.to(final.dtype)).sum()
    loss.backward()
    return y.detach(), final.detach(), {n: t.grad for n, t in leaves.items() if t is not None}


def err(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


FORMS = {
    "parallel": linear_recurrence_parallel,
    "chunkwise": linear_recurrence_chunkwise,
    "chunkwise-1": lambda **kw: linear_recurrence_chunkwise(**kw, chunk_size=1),
    "chunkwise-4": lambda **kw: linear_recurrence_chunkwise(**kw, chunk_size=4),
    "chunkwise-5": lambda **kw: linear_recurrence_chunkwise(**kw, chunk_size=5),
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("decay", ["scalar", "channel", "complex"])
@pytest.mark.parametrize("length", [1, 13, 20])
def test_forms_equal_reference_outputs_states_and_gradients_float64(form, decay, length):
    inputs = make_inputs(decay, length=length)
    y_ref, s_ref, g_ref = run_with_grads(linear_recurrence_reference, inputs)
    y, s, g = run_with_grads(FORMS[form], inputs)
    assert y.shape == (2, 2, length, 4) and s.shape == (2, 2, 3, 4)
    assert y.is_complex() == (decay == "complex")
    assert err(y, y_ref) < 1e-10 and err(s, s_ref) < 1e-10
    for name, grad in g_ref.items():
        assert err(g[name], grad) < 1e-10, name


def test_reference_matches_a_hand_computed_retention():
    """K = V = 1, constant gamma: h[t] = gamma h[t-1] + k[t] v[t]."""
    q = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64).view(1, 1, 3, 1)
    k = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64).view(1, 1, 3, 1)
    v = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64).view(1, 1, 3, 1)
    g = torch.full((1, 1, 3), torch.log(torch.tensor(0.5, dtype=torch.float64)).item(), dtype=torch.float64)
    y, s = linear_recurrence_reference(q, k, v, g)
    h = [3.0, 0.5 * 3.0 - 1.0, 0.5 * (0.5 * 3.0 - 1.0) + 1.0]
    assert torch.allclose(y.flatten(), torch.tensor([1.0 * h[0], 2.0 * h[1], -1.0 * h[2]], dtype=torch.float64), atol=1e-14)
    assert abs(s.item() - h[2]) < 1e-14


def test_parallel_without_the_causal_mask_fails_the_agreement_test():
    """Broken variant: dropping the s <= t mask (so the decay matrix also weights future keys,
    with exp(G[t] - G[s]) > 1) breaks the parallel == recurrent equality the tests rely on."""
    from genloom.kernels.linear_recurrence import parallel

    inputs = make_inputs("scalar", init=False)
    y_ref, _ = linear_recurrence_reference(**inputs)
    real_mask = parallel.decay_mask
    try:
        parallel.decay_mask = lambda G_t, G_s, causal: real_mask(G_t, G_s, torch.ones_like(causal))
        y_broken, _ = linear_recurrence_parallel(**inputs)
    finally:
        parallel.decay_mask = real_mask
    assert err(y_broken, y_ref) > 1e-3
    assert err(linear_recurrence_parallel(**inputs)[0], y_ref) < 1e-10


@pytest.mark.parametrize("decay", ["scalar", "channel", "complex"])
def test_split_through_initial_state_and_single_steps_equal_one_call(decay):
    inputs = make_inputs(decay, length=11)
    y, s = linear_recurrence_chunkwise(**inputs, chunk_size=4)
    first = {n: (t[:, :, :6] if n != "initial_state" else t) for n, t in inputs.items()}
    second = {n: t[:, :, 6:] for n, t in inputs.items() if n != "initial_state"}
    y1, s1 = linear_recurrence_chunkwise(**first, chunk_size=4)
    y2, s2 = linear_recurrence_chunkwise(**second, initial_state=s1, chunk_size=4)
    assert err(torch.cat([y1, y2], 2), y) < 1e-12 and err(s2, s) < 1e-12
    state, outs = inputs["initial_state"], []
    for t in range(11):
        y_t, state = linear_recurrence_step(state, *(inputs[n][:, :, t] for n in ("q", "k", "v", "g")))
        outs.append(y_t)
    assert err(torch.stack(outs, 2), y) < 1e-12 and err(state, s) < 1e-12


def test_chunkwise_is_stable_for_strong_decay():
    inputs = make_inputs("channel", length=64, init=False, dtype=torch.float32)
    inputs["g"] = inputs["g"] * 200  # cumulative log decay in the thousands
    y_ref, s_ref = linear_recurrence_reference(**inputs)
    y, s = linear_recurrence_chunkwise(**inputs, chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert err(y, y_ref) < 1e-5 and err(s, s_ref) < 1e-5


@pytest.mark.parametrize("backend", ["parallel", "chunkwise"])
def test_registered_backends_agree_through_the_dispatcher(backend):
    inputs = make_inputs("channel", dtype=torch.float32)
    check_kernel("linear_recurrence", backend, inputs["q"], inputs["k"], inputs["v"], inputs["g"], initial_state=inputs["initial_state"])


def test_shape_errors_name_the_argument_and_triton_refuses_what_it_cannot_run():
    inputs = make_inputs()
    inputs["g"] = inputs["g"][:, :, :5]
    with pytest.raises(ValueError, match="g \\(log decay\\) must be"):
        linear_recurrence_reference(**inputs)
    assert make_triton().supports(torch.device("cpu"), torch.float64) is not None
    if not triton_kernel.interpreter_active():
        assert "TRITON_INTERPRET" in make_triton().supports(torch.device("cpu"), torch.float32)


needs_triton = pytest.mark.skipif(triton_kernel.triton_unavailable_reason() is not None, reason="triton unavailable")


@needs_triton
@pytest.mark.skipif(not triton_kernel.interpreter_active(), reason="needs triton imported under TRITON_INTERPRET=1; run by test_triton_interpreter_in_subprocess")
@pytest.mark.parametrize("decay", ["scalar", "channel"])
def test_triton_interpreter_equals_reference_on_cpu(decay):
    backend = make_triton()
    assert backend.supports(torch.device("cpu"), torch.float32) is None
    inputs = make_inputs(decay, length=7, key=4, value=5, dtype=torch.float32)
    y_ref, s_ref, g_ref = run_with_grads(linear_recurrence_reference, {n: t.double() for n, t in inputs.items()})
    y, s, g = run_with_grads(backend, inputs)
    assert y.dtype == torch.float32
    assert err(y.double(), y_ref) < 1e-5 and err(s.double(), s_ref) < 1e-5
    for name, grad in g_ref.items():
        assert err(g[name].double(), grad) < 1e-5, name


@pytest.mark.slow
@needs_triton
def test_triton_interpreter_in_subprocess():
    """TRITON_INTERPRET=1 works only if set before triton's first import: run in a fresh process
    (slow: the fresh interpreter imports torch and triton, ~20 s on a loaded 2-core machine)."""
    if triton_kernel.interpreter_active():
        pytest.skip("already under the interpreter")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::test_triton_interpreter_equals_reference_on_cpu"],
        env=env, cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_triton
@pytest.mark.parametrize("decay", ["scalar", "channel"])
def test_triton_cuda_equals_reference(decay):
    inputs = make_inputs(decay, batch=2, heads=4, length=300, key=32, value=64, dtype=torch.float32, device="cuda")
    backend = make_triton()
    assert backend.supports(torch.device("cuda"), torch.float32) is None
    y_ref, s_ref, g_ref = run_with_grads(linear_recurrence_reference, {n: t.double() for n, t in inputs.items()})
    y, s, g = run_with_grads(backend, inputs)
    scale = max(1.0, y_ref.abs().max().item())
    assert err(y.double(), y_ref) < 1e-4 * scale and err(s.double(), s_ref) < 1e-4 * max(1.0, s_ref.abs().max().item())
    for name, grad in g_ref.items():
        assert err(g[name].double(), grad) < 1e-3 * max(1.0, grad.abs().max().item()), name
