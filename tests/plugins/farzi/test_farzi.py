"""Farzi: the meta-gradient through Adam by reverse mode with Hessian-vector products (memory
constant in the inner steps: the trajectory is reconstructed, not stored) equals autograd through
the fully unrolled Adam loop to 1e-5; the synthetic data lie on the simplex."""

import functools
from pathlib import Path

import pytest
import torch

from genloom.plugins.farzi.adam import AdamHyper, adam_forward, adam_reverse, adam_unrolled
from genloom.plugins.farzi.summary import FarziSummary, ar_init, ar_loss

V, L, ORDER, STEPS = 6, 8, 2, 12


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    summary = FarziSummary(4, L, V, rank=3, generator=g).double()
    real = torch.nn.functional.one_hot(torch.randint(0, V, (16, L), generator=g), V).double()
    theta0 = ar_init(V, ORDER, g, dtype=torch.float64)
    return summary, real, theta0


def _meta_gradient_unrolled(summary, real, theta0, hyper):
    loss = functools.partial(ar_loss, order=ORDER)
    theta = adam_unrolled(loss, theta0, summary.data(), STEPS, hyper)
    return torch.autograd.grad(loss(theta, real), (summary.latent, summary.basis))


def _meta_gradient_reverse(summary, real, theta0, hyper, reverse=adam_reverse):
    loss = functools.partial(ar_loss, order=ORDER)
    data = summary.data()
    theta, m, v = adam_forward(loss, theta0, data, STEPS, hyper)
    p = theta.clone().requires_grad_(True)
    theta_bar = torch.autograd.grad(loss(p, real), p)[0]
    data_bar, theta0_rebuilt = reverse(loss, theta_bar, theta, m, v, data.detach(), STEPS, hyper)
    return torch.autograd.grad(data, (summary.latent, summary.basis), grad_outputs=data_bar), theta0_rebuilt


def test_reverse_mode_adam_meta_gradient_equals_autograd_through_the_unrolled_loop():
    summary, real, theta0 = _setup()
    hyper = AdamHyper(lr=0.05)
    reference = _meta_gradient_unrolled(summary, real, theta0, hyper)
    reverse, theta0_rebuilt = _meta_gradient_reverse(summary, real, theta0, hyper)
    for a, b in zip(reference, reverse):
        assert b.abs().max() > 1e-6  # a real signal
        assert (a - b).abs().max() < 1e-5 * max(1.0, a.abs().max().item())
    # the trajectory was reconstructed backwards, not stored: the walk ends at the initial parameters
    assert (theta0_rebuilt - theta0).abs().max() < 1e-8


def test_reverse_mode_without_the_hessian_vector_product_term_is_caught():
    # broken variant: θ̄ does not receive H ḡ, so earlier steps see a stale adjoint
    import genloom.plugins.farzi.adam as adam

    def no_hvp_reverse(loss, theta_bar, theta, m, v, data, steps, hyper):
        original = torch.autograd.grad

        def grad_without_theta_term(outputs, inputs, grad_outputs=None, **kw):
            result = original(outputs, inputs, grad_outputs=grad_outputs, **kw)
            if grad_outputs is not None and isinstance(inputs, tuple) and len(inputs) == 2:
                return (torch.zeros_like(result[0]), result[1])
            return result

        torch.autograd.grad = grad_without_theta_term
        try:
            return adam.adam_reverse(loss, theta_bar, theta, m, v, data, steps, hyper)
        finally:
            torch.autograd.grad = original

    summary, real, theta0 = _setup()
    hyper = AdamHyper(lr=0.05)
    reference = _meta_gradient_unrolled(summary, real, theta0, hyper)
    broken, _ = _meta_gradient_reverse(summary, real, theta0, hyper, reverse=no_hvp_reverse)
    assert max((a - b).abs().max().item() for a, b in zip(reference, broken)) > 1e-4


def test_functional_adam_matches_torch_adam():
    summary, real, theta0 = _setup(1)
    hyper = AdamHyper(lr=0.05)
    loss = functools.partial(ar_loss, order=ORDER)
    theta, _, _ = adam_forward(loss, theta0, real, STEPS, hyper)
    p = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=hyper.lr, betas=(hyper.beta1, hyper.beta2), eps=hyper.eps)
    for _ in range(STEPS):
        opt.zero_grad()
        loss(p, real).backward()
        opt.step()
    assert (p.detach() - theta).abs().max() < 1e-12


def test_synthetic_rows_lie_on_the_simplex():
    summary, _, _ = _setup()
    data = summary.data()
    assert data.shape == (4, L, V)
    assert (data >= 0).all() and torch.allclose(data.sum(-1), torch.ones(4, L, dtype=torch.float64))
    assert summary.latent.numel() + summary.basis.numel() < 4 * L * V  # the latent factorisation is smaller


def test_the_objectives_backward_is_the_reverse_mode_meta_gradient():
    from genloom.plugins.farzi.objective import _MetaLoss

    summary, real, theta0 = _setup(2)
    hyper = AdamHyper(lr=0.05)
    reference = _meta_gradient_unrolled(summary, real, theta0, hyper)
    outer = _MetaLoss.apply(summary.data(), real, theta0, ORDER, STEPS, hyper)
    grads = torch.autograd.grad(outer, (summary.latent, summary.basis))
    for a, b in zip(reference, grads):
        assert (a - b).abs().max() < 1e-5 * max(1.0, a.abs().max().item())


def test_runnable_config_distils_a_batch_and_writes_the_summary(tmp_path):
    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "farzi.yaml",
                               ["data.max_train_bytes=4000", "data.max_eval_bytes=1000", "objective.inner_steps=2"])
    objective = built.model.objective
    assert objective.summary.latent.grad is not None and objective.summary.latent.grad.abs().max() > 0
    assert all(p.grad is None for p in built.model.backbone.parameters())  # the contract's backbone is not used

    class Gen:
        model, run_dir = built.model, tmp_path

    import json

    rows = json.loads(objective.generate_samples(Gen()).read_text())
    assert len(rows) == 8 and all(len(r["ids"]) == 33 for r in rows)
