"""Adam as a differentiable map from data to trained parameters, and its reverse mode in constant memory.

Forward (``adam_forward``): ``g_t = ∇θ L(θ_{t-1}, X)``, ``m_t = β1 m_{t-1} + (1-β1) g_t``,
``v_t = β2 v_{t-1} + (1-β2) g_t²``, ``θ_t = θ_{t-1} - lr (m_t / c1_t) / (sqrt(v_t / c2_t) + ε)`` with
``c_t = 1 - β^t`` (PyTorch's Adam), from ``m_0 = v_0 = 0``.

Reverse (``adam_reverse``): given ``∂F/∂θ_T`` of an outer loss F, walks the steps backwards. Each
step first *reconstructs* ``θ_{t-1}`` from ``θ_t`` and ``(m_t, v_t)`` (undoing the update), recomputes
``g_t`` there, then undoes ``m`` and ``v`` -- so nothing of the trajectory is stored and memory does
not grow with the number of steps. The adjoints follow the update's chain rule:

    ū      = -lr θ̄
    m̄     += ū / (c1 (s + ε)),                          s = sqrt(v_t / c2)
    v̄     += ū · (-(m_t / c1) / (s + ε)²) · 1 / (2 s c2)
    ḡ      = (1-β1) m̄ + 2 (1-β2) g_t ⊙ v̄
    θ̄     += ∇θ (g_t · ḡ)        (a Hessian-vector product)
    X̄     += ∇X (g_t · ḡ)        (the mixed second derivative, the meta-gradient's contribution)
    m̄     ← β1 m̄,   v̄ ← β2 v̄
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch


@contextmanager
def grad_enabled():
    """Autograd on even inside ``torch.no_grad`` or ``torch.inference_mode`` (validation): the inner loop needs gradients."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@dataclass
class AdamHyper:
    lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


def adam_forward(loss: Callable, theta0: torch.Tensor, data: torch.Tensor, steps: int, hyper: AdamHyper):
    """``(θ_T, m_T, v_T)`` after ``steps`` Adam steps on ``loss(θ, data)``; no graph is kept."""
    with grad_enabled():
        theta = theta0.detach().clone()
        m, v = torch.zeros_like(theta), torch.zeros_like(theta)
        data = data.detach().clone()
        for t in range(1, steps + 1):
            p = theta.clone().requires_grad_(True)
            g = torch.autograd.grad(loss(p, data), p)[0]
            m = hyper.beta1 * m + (1 - hyper.beta1) * g
            v = hyper.beta2 * v + (1 - hyper.beta2) * g * g
            theta = theta - hyper.lr * (m / (1 - hyper.beta1 ** t)) / (torch.sqrt(v / (1 - hyper.beta2 ** t)) + hyper.eps)
    return theta, m, v


def adam_unrolled(loss: Callable, theta0: torch.Tensor, data: torch.Tensor, steps: int, hyper: AdamHyper) -> torch.Tensor:
    """θ_T with the whole unrolled loop in the autograd graph (memory grows with ``steps``): the reference."""
    theta = theta0 if theta0.requires_grad else theta0.detach().clone().requires_grad_(True)
    m, v = torch.zeros_like(theta0), torch.zeros_like(theta0)
    for t in range(1, steps + 1):
        g = torch.autograd.grad(loss(theta, data), theta, create_graph=True)[0]
        m = hyper.beta1 * m + (1 - hyper.beta1) * g
        v = hyper.beta2 * v + (1 - hyper.beta2) * g * g
        theta = theta - hyper.lr * (m / (1 - hyper.beta1 ** t)) / (torch.sqrt(v / (1 - hyper.beta2 ** t)) + hyper.eps)
    return theta


def adam_reverse(loss: Callable, theta_bar: torch.Tensor, theta: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                 data: torch.Tensor, steps: int, hyper: AdamHyper):
    """``(∂F/∂data, reconstructed θ_0)`` from ``θ̄_T = ∂F/∂θ_T`` and the final state, walking the steps backwards."""
    b1, b2, lr, eps = hyper.beta1, hyper.beta2, hyper.lr, hyper.eps
    theta_bar = theta_bar.detach().clone()
    m_bar, v_bar = torch.zeros_like(theta), torch.zeros_like(theta)
    data_bar = torch.zeros_like(data)
    theta, m, v = theta.detach().clone(), m.detach().clone(), v.detach().clone()
    for t in range(steps, 0, -1):
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        s = torch.sqrt(v / c2)
        denom = s + eps
        theta = theta + lr * (m / c1) / denom  # θ_{t-1}
        with grad_enabled():
            p = theta.clone().requires_grad_(True)
            x = data.detach().clone().requires_grad_(True)
            g = torch.autograd.grad(loss(p, x), p, create_graph=True)[0]
            u_bar = -lr * theta_bar
            m_bar = m_bar + u_bar / (c1 * denom)
            v_bar = v_bar + torch.where(s > 0, u_bar * (-(m / c1) / denom ** 2) / (2 * s.clamp_min(1e-300) * c2), torch.zeros_like(s))
            g_bar = (1 - b1) * m_bar + 2 * (1 - b2) * g.detach() * v_bar
            h_theta, h_data = torch.autograd.grad(g, (p, x), grad_outputs=g_bar, allow_unused=True)
        theta_bar = theta_bar + h_theta
        if h_data is not None:
            data_bar = data_bar + h_data
        m_bar, v_bar = b1 * m_bar, b2 * v_bar
        g = g.detach()
        m = (m - (1 - b1) * g) / b1
        v = ((v - (1 - b2) * g * g) / b2).clamp_min(0.0)
    return data_bar, theta
