"""The controlled stable neural SDE: control path, the three diffusion classes, Euler-Maruyama.

One forward pass: X(t) = the embedded observations interpolated in time (``control_path``);
z_0 = tanh(Linear(X(t_0))); for each grid step k, with dW ~ N(0, dt):

    LSDE:   z <- z + f(t, z, X(t)) dt + sigma(t) dW
    LNSDE:  z <- z + f(t, z, X(t)) dt + sigma(t) * z * dW
    GSDE:   log z <- log z + (f(t, z, X(t)) - sigma(t)^2 / 2) dt + sigma(t) dW     (z = exp(log z) > 0)

after the observed steps the control is held at its last value for ``horizon`` more steps; the
latent states of those steps are the output.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.stable_neural_sde import StableSdeConfig


def control_path(times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, grid: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of observations (B, L, D) at ``times`` (L,) on ``grid`` (G,), skipping masked-out ones.

    Outside the observed range the nearest observation is held. Returns (B, G, D).
    """
    batch, length, width = values.shape
    mask = torch.ones(batch, length, dtype=torch.bool, device=values.device) if mask is None else mask.bool()
    out = torch.empty(batch, len(grid), width, dtype=values.dtype, device=values.device)
    for b in range(batch):
        t, v = times[mask[b]], values[b][mask[b]]
        if len(t) == 0:
            raise ValueError("a sequence has no observed value to build its control path from")
        index = torch.searchsorted(t, grid.to(t.dtype)).clamp(1, max(len(t) - 1, 1))
        if len(t) == 1:
            out[b] = v[0].expand(len(grid), width)
            continue
        t0, t1 = t[index - 1], t[index]
        w = ((grid.to(t.dtype) - t0) / (t1 - t0)).clamp(0, 1)[:, None].to(values.dtype)
        out[b] = (1 - w) * v[index - 1] + w * v[index]
    return out


class Diffusion(nn.Module):
    """sigma(t) > 0 (a small network of time only) and g(t, z) of the chosen class."""

    def __init__(self, d_model: int, kind: str):
        super().__init__()
        self.kind = kind
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, d_model))

    def sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.net(t.reshape(1, 1).to(like.dtype))).expand_as(like) * 0.1

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """g(t, z): sigma(t) (langevin) or sigma(t) * z (linear-noise, geometric)."""
        sigma = self.sigma(t, z)
        return sigma if self.kind == "langevin" else sigma * z


class StableSde(Backbone):
    patterns = frozenset({"full"})

    def __init__(self, config: StableSdeConfig):
        super().__init__()
        self.config = config
        self.d_model, self.kind, self.dt, self.horizon = config.d_model, config.kind, config.dt, config.horizon
        self.initial = nn.Linear(config.d_model, config.d_model)
        self.drift = nn.Sequential(nn.Linear(2 * config.d_model + 1, config.hidden), nn.Tanh(), nn.Linear(config.hidden, config.d_model))
        self.diffusion = Diffusion(config.d_model, config.kind)

    def f(self, t: torch.Tensor, z: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        time = t.reshape(1, 1).to(z.dtype).expand(z.shape[0], 1)
        return self.drift(torch.cat([z, control, time], dim=-1))

    def integrate(self, z0: torch.Tensor, controls: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Euler-Maruyama over the grid (one step per control row); returns the states after each step (B, G, d)."""
        dt = self.dt
        state = torch.log(z0) if self.kind == "geometric" else z0
        path = []
        for k in range(controls.shape[1]):
            t = torch.tensor(k * dt, device=z0.device)
            dw = torch.randn(state.shape, generator=generator, dtype=state.dtype, device=state.device) * dt ** 0.5
            if self.kind == "geometric":
                z = torch.exp(state)
                sigma = self.diffusion.sigma(t, z)
                state = state + (self.f(t, z, controls[:, k]) - 0.5 * sigma ** 2) * dt + sigma * dw
                path.append(torch.exp(state))
            else:
                state = state + self.f(t, state, controls[:, k]) * dt + self.diffusion(t, state) * dw
                path.append(state)
        return torch.stack(path, 1)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("stable-sde integrates the whole window; it has no incremental state")
        batch, length, _ = h.shape
        times = torch.arange(length, dtype=h.dtype, device=h.device) * self.dt
        grid = torch.arange(length + self.horizon, dtype=h.dtype, device=h.device) * self.dt
        controls = control_path(times, h, valid, grid) if valid is not None else torch.cat([h, h[:, -1:].expand(-1, self.horizon, -1)], 1)
        paths = 1 if self.training else self.config.eval_paths
        z0 = self.initial(controls[:, 0])
        z0 = nn.functional.softplus(z0) + 1e-3 if self.kind == "geometric" else torch.tanh(z0)
        repeated = controls.repeat(paths, 1, 1)
        out = self.integrate(z0.repeat(paths, 1), repeated)[:, length:]
        return out.view(paths, batch, self.horizon, -1).mean(0)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("stable-sde integrates the whole window; it has no incremental state")


def build(config: StableSdeConfig, ctx) -> StableSde:
    if config.horizon is None:
        config.bind(ctx)
    ctx.set("d_model", config.d_model)
    return StableSde(config)
