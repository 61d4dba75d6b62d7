"""The EBT head: predict next-token logits by descending a learned energy.

For context states c (B, L, D) from the backbone and candidate logits y (B, L, V)::

    e(y)     = softmax(y) W_emb                       expected embedding of the candidate
    E(c, y)  = MLP([c, e(y), c * e(y)])               one energy per position
    y_0      = 0;   y_{k+1} = y_k - alpha * dE/dy_k    (alpha = softplus(raw_alpha) > 0)

Training keeps the graph of every step (second-order gradients reach the energy MLP and alpha);
evaluation detaches each step and may stop early on an energy threshold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genloom.core.model import Head


class EBTHead(Head):
    def __init__(self, cfg, vocab_size: int, d_model: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed_tokens.weight, std=cfg.init_std)
        self.energy_net = nn.Sequential(nn.Linear(3 * d_model, cfg.energy_hidden), nn.SiLU(), nn.Linear(cfg.energy_hidden, 1))
        self.raw_step = nn.Parameter(torch.tensor(math.log(math.expm1(cfg.step_size))))  # softplus^-1
        self.last_steps = 0
        self.last_energies: list[float] = []

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def energy(self, context: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """E(c, y) per position (B, L)."""
        e = torch.softmax(logits, -1) @ self.embed_tokens.weight.to(logits.dtype)
        return self.energy_net(torch.cat([context, e, context * e], -1))[..., 0]

    @property
    def step_size(self) -> torch.Tensor:
        return F.softplus(self.raw_step)

    def predict(self, context: torch.Tensor, steps: int, threshold: float | None = None, second_order: bool = True):
        """Logits after up to ``steps`` gradient steps; also records the mean energy per step."""
        y = context.new_zeros(*context.shape[:-1], self.vocab_size).requires_grad_(True)
        energies = []
        for step in range(steps):
            E = self.energy(context, y)
            energies.append(float(E.detach().mean()))
            if threshold is not None and step >= 1 and energies[-2] - energies[-1] < threshold:
                self.last_steps = step
                break
            (grad,) = torch.autograd.grad(E.sum(), y, create_graph=second_order)
            y = y - self.step_size.to(y.dtype) * grad
            if not second_order:
                y = y.detach().requires_grad_(True)
        else:
            self.last_steps = steps
            energies.append(float(self.energy(context, y).detach().mean()))
        self.last_energies = energies
        return y

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.predict(h, self.cfg.steps)
        # evaluation and generation may run under inference mode: optimise on a normal copy
        with torch.inference_mode(False), torch.enable_grad():
            context = h.clone().detach()
            if self.cfg.energy_threshold is not None:
                y = self.predict(context, self.cfg.max_steps, self.cfg.energy_threshold, second_order=False)
            else:
                y = self.predict(context, self.cfg.steps, second_order=False)
            return y.detach()


def build(config, ctx) -> EBTHead:
    return EBTHead(config, ctx.vocab_size, ctx.d_model)
