"""Modal distillation: fit a diagonal SSM of order d to each long filter, and distil a backbone.

For a target filter ``h`` (length L) and poles ``lambda_n = exp(-exp(a_n) + i b_n)`` the impulse
response ``Re(sum_n R_n lambda_n^t) = sum_n Re(R_n) Re(lambda_n^t) - Im(R_n) Im(lambda_n^t)`` is linear in
the residues, so the best residues for given poles solve a linear least-squares problem (normal
equations with a tiny ridge, differentiable). The poles are then refined by gradient steps on the
relative l2 error *through* that solve (variable projection), keeping the best iterate.

Orders are fitted in increasing sequence (:func:`fit_orders`), each one warm-started with the
previous order's poles plus new ones from a fixed grid: the least-squares span only grows, so the
error can only fall as the order grows.
"""

from __future__ import annotations

import dataclasses
import math

import torch


def _grid(count: int, start: int = 0):
    """A deterministic spread of pole parameters (log decay rate, angle) for poles start..start+count-1."""
    n = torch.arange(start, start + count, dtype=torch.float64)
    golden = (n * 0.6180339887498949) % 1.0  # low-discrepancy angles in [0, pi)
    rate = 0.01 * (100.0 ** ((n * 0.7548776662466927) % 1.0))  # decay rates in [0.01, 1)
    return torch.log(rate), math.pi * golden


def _basis(log_decay, angle, length):
    t = torch.arange(length, dtype=torch.float64)
    radius = torch.exp(-torch.exp(log_decay)[..., None] * t)  # (F, d, L)
    phase = angle[..., None] * t
    return radius * torch.cos(phase), radius * torch.sin(phase)  # Re and Im of lambda^t


def solve_residues(target, log_decay, angle, ridge: float = 1e-10):
    """Least-squares residues (re, im) (F, d) for the given poles; also the fitted responses (F, L)."""
    re, im = _basis(log_decay, angle, target.shape[-1])
    A = torch.cat([re, -im], 1).transpose(1, 2)  # (F, L, 2d)
    gram = A.transpose(1, 2) @ A
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)[:, None, None]
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    coef = torch.linalg.solve(gram + ridge * scale * eye, A.transpose(1, 2) @ target[..., None])[..., 0]
    d = log_decay.shape[-1]
    return coef[:, :d], coef[:, d:], (A @ coef[..., None])[..., 0]


def relative_error(target, fitted):
    return (target - fitted).norm(dim=-1) / target.norm(dim=-1).clamp_min(1e-30)


def fit_modal(target: torch.Tensor, order: int, *, steps: int = 100, lr: float = 0.05, init=None):
    """Fit order-``order`` modal filters to ``target`` (F, L). Returns a dict of (F, order) tensors
    ``log_decay``, ``angle``, ``residue_re``, ``residue_im`` and the relative error (F,)."""
    target = target.detach().to(torch.float64)
    F_ = target.shape[0]
    if init is None:
        a, b = _grid(order)
        log_decay, angle = a.repeat(F_, 1), b.repeat(F_, 1)
    else:
        a, b = _grid(order - init[0].shape[1], start=init[0].shape[1])
        log_decay = torch.cat([init[0], a.repeat(F_, 1)], 1)
        angle = torch.cat([init[1], b.repeat(F_, 1)], 1)
    log_decay, angle = log_decay.clone().requires_grad_(True), angle.clone().requires_grad_(True)
    best = None
    optimizer = torch.optim.Adam([log_decay, angle], lr=lr)
    for step in range(steps + 1):
        re, im, fitted = solve_residues(target, log_decay, angle)
        error = relative_error(target, fitted)
        if best is None:
            best = [log_decay.detach().clone(), angle.detach().clone(), re.detach().clone(), im.detach().clone(), error.detach().clone()]
        else:  # keep the best iterate per filter
            better = error.detach() < best[4]
            for slot, value in zip(best, (log_decay, angle, re, im, error)):
                slot[better] = value.detach()[better]
        if step == steps:
            break
        optimizer.zero_grad()
        error.sum().backward()
        optimizer.step()
    return {"log_decay": best[0], "angle": best[1], "residue_re": best[2], "residue_im": best[3], "error": best[4]}


def fit_orders(target: torch.Tensor, orders, **kw) -> dict[int, dict]:
    """Fit increasing orders, each warm-started from the previous one's poles (error never rises)."""
    fits, previous = {}, None
    for order in sorted(orders):
        fit = fit_modal(target, order, init=previous, **kw)
        fits[order] = fit
        previous = (fit["log_decay"], fit["angle"])
    return fits


def distill_backbone(backbone, order: int, length: int, **kw):
    """A modal copy of an implicit-filter backbone: every other weight is copied, each layer's
    filters (over ``length`` lags) are fitted by order-``order`` modal SSMs. Returns
    ``(modal_backbone, errors)`` with the relative error per layer and head."""
    from genloom.plugins.laughing_hyena.model import LaughingHyena

    if backbone.modal:
        raise ValueError("the backbone's filters are already modal")
    cfg = dataclasses.replace(backbone.cfg, filter="modal", order=order)
    student = LaughingHyena(cfg).to(dtype=next(backbone.parameters()).dtype)
    weights = {k: v for k, v in backbone.state_dict().items() if ".filter." not in k}
    missing, _ = student.load_state_dict(weights, strict=False)
    assert all(".filter." in k for k in missing), missing
    errors = []
    with torch.no_grad():
        for teacher_layer, student_layer in zip(backbone.layers, student.layers):
            target = teacher_layer.operator.filter.kernel(length, torch.float64)
            with torch.enable_grad():
                fits = fit_orders(target, sorted({max(1, order // 2), order}), **kw)
            fit = fits[order]
            modal = student_layer.operator.filter
            for name in ("log_decay", "angle", "residue_re", "residue_im"):
                getattr(modal, name).copy_(fit[name].to(getattr(modal, name).dtype))
            errors.append(fit["error"])
    return student, torch.stack(errors)
