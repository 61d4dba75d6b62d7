"""Speculative decoding of real-valued sequences with a draft and a target density model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genloom.core.errors import GenerationError
from genloom.toolkit.acceptance import GaussianMixture1D, speculative_accept


class MixtureAR(nn.Module):
    """A causal model of a real-valued sequence: the last ``window`` values -> a K-Gaussian mixture
    for the next value, at every position. ``forward(values (B, T)) -> GaussianMixture1D`` over (B, T, K)."""

    def __init__(self, window: int = 4, hidden: int = 32, components: int = 3, min_scale: float = 0.05):
        super().__init__()
        self.window, self.components, self.min_scale = window, components, min_scale
        self.net = nn.Sequential(nn.Linear(window, hidden), nn.Tanh(), nn.Linear(hidden, 3 * components))

    def forward(self, values: torch.Tensor) -> GaussianMixture1D:
        padded = torch.nn.functional.pad(values, (self.window - 1, 0))
        windows = padded.unfold(-1, self.window, 1)  # (B, T, window): values up to and including t
        logits, loc, raw = self.net(windows.to(self.net[0].weight.dtype)).chunk(3, dim=-1)
        return GaussianMixture1D(logits, loc, torch.nn.functional.softplus(raw) + self.min_scale)


def _at(dist: GaussianMixture1D, index) -> GaussianMixture1D:
    return GaussianMixture1D(dist.logits[:, index], dist.loc[:, index], dist.scale[:, index])


@dataclass
class DecodeResult:
    values: torch.Tensor
    """(B, n_new) the generated values."""
    target_passes: int
    """Target forward passes over the whole call."""
    accepted: int
    """Draft values accepted over the whole call."""
    proposed: int
    """Draft values proposed over the whole call."""


class ContinuousSpeculativeDecoder:
    """Draft ``gamma`` values, verify them with one target pass, keep the accepted prefix."""

    exact = "sampling"

    def __init__(self, config, ctx=None):
        self.config = config
        self.ctx = ctx
        self.gamma = config.gamma

    def start(self, session):  # the discrete token loop
        raise GenerationError("decoder 'continuous-spec-decoding' decodes real-valued sequences through "
                              "ContinuousSpeculativeDecoder.decode(target, draft, context, n_new); it does not run on the token loop")

    @torch.no_grad()
    def decode(self, target, draft, context: torch.Tensor, n_new: int, generator: torch.Generator | None = None) -> DecodeResult:
        """Continue each row of ``context`` (B, T >= 1) by ``n_new`` values whose law is the target's."""
        if context.dim() != 2 or context.shape[1] < 1:
            raise ValueError(f"context must be (B, T) with T >= 1, got {tuple(context.shape)}")
        rows, passes, accepted_total, proposed = [], 0, 0, 0
        for row in context:
            seq = row[None]
            start = seq.shape[1]
            while seq.shape[1] - start < n_new:
                drafts, qs = [], []
                for _ in range(self.gamma):
                    q = _at(draft(seq if not drafts else torch.cat([seq, torch.stack(drafts, 1)], 1)), -1)
                    drafts.append(q.sample(generator))
                    qs.append(q)
                extended = torch.cat([seq, torch.stack(drafts, 1)], 1)
                p_all = target(extended)
                passes += 1
                proposed += self.gamma
                new = []
                for i in range(self.gamma):
                    p = _at(p_all, seq.shape[1] - 1 + i)
                    ok, value = speculative_accept(p, qs[i], drafts[i], generator, self.config.max_residual_tries)
                    new.append(value)
                    if not bool(ok.all()):
                        break
                    accepted_total += 1
                else:  # every draft accepted: a bonus value from the target after the last draft
                    new.append(_at(p_all, -1).sample(generator))
                seq = torch.cat([seq, torch.stack(new, 1)], 1)
            rows.append(seq[0, start:start + n_new])
        return DecodeResult(torch.stack(rows), passes, accepted_total, proposed)


def build(config, ctx):
    return ContinuousSpeculativeDecoder(config, ctx)
