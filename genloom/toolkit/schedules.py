"""Per-position noise schedules for masked (absorbing) diffusion, and the loss they define.

A schedule is a value that maps (position i, step t) to a noise level ``m(i, t)``: the probability
that token i is masked at step t. Steps run over ``0 .. T`` with ``m(i, 0) = 0`` (clean data) and
``m(i, T) = 1`` (all masked); decoding walks from ``t = T`` down to 0. Every schedule is
non-decreasing in t for each position. One type covers the family:

- :class:`SharedSchedule` -- every position has the same level ``t / T`` (MDLM / RADD; the
  linear ``alpha(t) = 1 - t`` schedule on a grid of T steps);
- :class:`StaircaseSchedule` -- position i becomes clean exactly at decoding step i + 1 (left to
  right, one position per step): autoregression as a diffusion schedule (Hyperschedules);
- :class:`LineSchedule` -- AR-Diffusion's movement-speed lines: a noise front of ``width``
  positions sweeps left to right, so tokens on the left are denoised earlier and faster; width 1
  with T = L is the staircase, an infinite width is the shared schedule;
- :class:`BlockSchedule` -- blocks of ``block_size`` positions, left to right, each going from
  all-masked to clean in ``steps_per_block`` steps (semi-autoregressive / block diffusion).

The loss (:func:`nelbo_terms`) is the discrete-time negative ELBO of absorbing diffusion with
independent per-position masking:

    L = sum_{t=1..T} E_{x_t ~ q(.|x_0, t)} sum_i 1[x_t^i = mask] * w(i, t) * -log p(x_0^i | x_t),
    w(i, t) = (m(i, t) - m(i, t-1)) / m(i, t),

the probability that a token masked at step t is revealed on the way to step t - 1. For the
shared schedule ``w = 1/t`` and the sum is MDLM's finite-T loss; for the staircase exactly one
position is revealed per step and the sum is the left-to-right next-token NLL. A training
estimate draws one t per sequence and multiplies its term by T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """Masking probability per (position, step); subclasses implement :meth:`level`.

    ``steps`` is T, the number of discrete steps between clean data (t = 0) and all-masked (t = T).
    """

    steps: int

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")

    def level(self, positions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``m(i, t)`` in [0, 1] (float64), broadcasting ``positions`` against the integer steps ``t``."""
        raise NotImplementedError

    # -- derived quantities -------------------------------------------------------------------
    def reveal_probability(self, positions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``w(i, t) = (m(i, t) - m(i, t-1)) / m(i, t)``: a token masked at step t is clean at t - 1
        with this probability (0 where ``m(i, t) = 0``)."""
        t = torch.as_tensor(t, device=positions.device)
        now = self.level(positions, t)
        before = self.level(positions, t - 1)
        return torch.where(now > 0, (now - before) / now.clamp_min(1e-300), torch.zeros_like(now))

    def table(self, length: int) -> torch.Tensor:
        """The whole schedule as a (T + 1, length) tensor: row t holds ``m(., t)``."""
        pos = torch.arange(length).reshape(1, -1)
        t = torch.arange(self.steps + 1).reshape(-1, 1)
        return self.level(pos, t)

    def check(self, length: int) -> None:
        """Raise ValueError unless m(., 0) = 0, m(., T) = 1 and m is non-decreasing in t."""
        tab = self.table(length)
        if not bool((tab[0] == 0).all()) or not bool((tab[-1] == 1).all()):
            raise ValueError(f"{type(self).__name__}: m(i, 0) must be 0 and m(i, T) must be 1 for every position")
        if not bool((tab[1:] >= tab[:-1]).all()):
            raise ValueError(f"{type(self).__name__}: m(i, t) must be non-decreasing in t")


@dataclass(frozen=True)
class SharedSchedule(NoiseSchedule):
    """Every position at level ``t / T`` (MDLM's linear schedule on T steps)."""

    def level(self, positions, t):
        t = torch.as_tensor(t, device=positions.device)
        out = (t.to(torch.float64) / self.steps).clamp(0.0, 1.0)
        return out.expand(torch.broadcast_shapes(positions.shape, t.shape)).clone()


@dataclass(frozen=True)
class StaircaseSchedule(NoiseSchedule):
    """Position i is masked while ``t >= T - i``: the first decoding step reveals position 0, step
    k reveals position k - 1 (``steps`` must be at least the sequence length)."""

    def level(self, positions, t):
        t = torch.as_tensor(t, device=positions.device)
        return (t >= self.steps - positions).to(torch.float64)


@dataclass(frozen=True)
class LineSchedule(NoiseSchedule):
    """AR-Diffusion's movement-speed lines for a sequence of ``length`` positions.

    Decoding progress ``p = 1 - t / T`` moves a noise front ``f = p (length - 1 + width) - width``
    from ``-width`` to ``length - 1``; position i has level ``clip((i - f) / width, 0, 1)``: positions
    left of the front are clean, the ``width`` positions after it are partly noisy (the closer to
    the front, the less), the rest masked. Width 1 with T = length is the staircase.
    """

    length: int = 1
    width: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.length < 1:
            raise ValueError(f"length must be at least 1, got {self.length}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")

    def level(self, positions, t):
        t = torch.as_tensor(t, device=positions.device).to(torch.float64)
        front = (self.steps - t) * (self.length - 1 + self.width) / self.steps - self.width  # exact on integer grids
        return ((positions.to(torch.float64) - front) / self.width).clamp(0.0, 1.0)


@dataclass(frozen=True)
class BlockSchedule(NoiseSchedule):
    """Blocks of ``block_size`` positions denoised left to right, ``steps_per_block`` steps each.

    ``steps`` must equal ``n_blocks * steps_per_block``; block k (of n) goes from masked to clean
    linearly while ``t`` runs from ``(n - k) * S`` down to ``(n - k - 1) * S``. Block size 1 with one
    step per block is the staircase.
    """

    block_size: int = 1
    steps_per_block: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.block_size < 1 or self.steps_per_block < 1:
            raise ValueError(f"block_size and steps_per_block must be at least 1, got {self.block_size}, {self.steps_per_block}")
        if self.steps % self.steps_per_block:
            raise ValueError(f"steps ({self.steps}) must be a multiple of steps_per_block ({self.steps_per_block})")

    @classmethod
    def for_length(cls, length: int, block_size: int, steps_per_block: int = 1) -> "BlockSchedule":
        n_blocks = -(-length // block_size)
        return cls(steps=n_blocks * steps_per_block, block_size=block_size, steps_per_block=steps_per_block)

    def level(self, positions, t):
        t = torch.as_tensor(t, device=positions.device).to(torch.float64)
        n_blocks = self.steps // self.steps_per_block
        block = torch.div(positions, self.block_size, rounding_mode="floor").to(torch.float64)
        start = (n_blocks - 1 - block) * self.steps_per_block  # the block is clean at t <= start
        return ((t - start) / self.steps_per_block).clamp(0.0, 1.0)


SCHEDULES = {"shared": SharedSchedule, "staircase": StaircaseSchedule, "line": LineSchedule, "block": BlockSchedule}


def make_schedule(kind: str, *, steps: int, length: int | None = None, width: float = 1.0, block_size: int = 1,
                  steps_per_block: int = 1) -> NoiseSchedule:
    """A schedule by name (``shared``, ``staircase``, ``line``, ``block``) with the fields it uses."""
    if kind == "shared":
        return SharedSchedule(steps)
    if kind == "staircase":
        return StaircaseSchedule(steps)
    if kind == "line":
        return LineSchedule(steps, length=int(length or steps), width=width)
    if kind == "block":
        return BlockSchedule(steps, block_size=block_size, steps_per_block=steps_per_block)
    raise ValueError(f"unknown schedule '{kind}' (known: {', '.join(SCHEDULES)})")


# -- corruption and loss ------------------------------------------------------------------------

def corrupt(x0: torch.Tensor, schedule: NoiseSchedule, t: torch.Tensor, mask_id: int, *, uniform: torch.Tensor | None = None,
            generator=None, maskable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``x_t`` for clean ids (B, L) at per-sequence steps ``t`` (B,): token i is masked when
    ``u_i < m(i, t)`` with ``u`` uniform (given as ``uniform`` to share noise between calls).
    ``maskable`` (B, L): positions that may be masked (others, e.g. a prompt, stay clean and their
    positions are counted from the first maskable one). Returns (x_t, masked)."""
    B, L = x0.shape
    if maskable is None:
        positions = torch.arange(L, device=x0.device).expand(B, L)
    else:
        positions = (maskable.long().cumsum(1) - 1).clamp_min(0)
    level = schedule.level(positions, torch.as_tensor(t, device=x0.device).reshape(-1, 1))
    u = uniform if uniform is not None else torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
    masked = u.to(torch.float64) < level
    if maskable is not None:
        masked = masked & maskable
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def nelbo_terms(token_nll: torch.Tensor, masked: torch.Tensor, schedule: NoiseSchedule, t: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position terms ``1[masked] * w(i, t) * nll`` (B, L) of step ``t`` (B,) of the NELBO.

    ``token_nll`` (B, L) is ``-log p(x_0^i | x_t)``; masked-out terms are selected away (no gradient).
    Summing over t = 1..T gives the NELBO; one t drawn uniformly, times T, is an unbiased estimate.
    """
    B, L = masked.shape
    if positions is None:
        positions = torch.arange(L, device=masked.device).expand(B, L)
    weight = schedule.reveal_probability(positions, torch.as_tensor(t, device=masked.device).reshape(-1, 1))
    weight = weight.to(token_nll.dtype)
    return torch.where(masked, weight * token_nll, torch.zeros_like(token_nll))


def sample_steps(batch_size: int, steps: int, *, generator=None, device=None, antithetic: bool = True) -> torch.Tensor:
    """Per-sequence steps t in {1..T} (B,); ``antithetic`` spreads them evenly over the range."""
    u = torch.rand(1 if antithetic else batch_size, generator=generator, device=device)
    if antithetic:
        u = (u + torch.arange(batch_size, device=device) / batch_size) % 1.0
    return (u * steps).floor().long().clamp_max(steps - 1) + 1


def exact_nelbo(denoise, x0: torch.Tensor, schedule: NoiseSchedule, mask_id: int, *, uniform: torch.Tensor | None = None,
                maskable: torch.Tensor | None = None) -> torch.Tensor:
    """The NELBO (B,) summed over every step t = 1..T with one shared uniform draw per token.

    ``denoise(x_t) -> (B, L, V)`` logits. For a schedule whose levels are 0 or 1 (the staircase,
    a block schedule with one step per block) the corruption is deterministic and this is the
    exact NELBO, not an estimate. ``maskable`` as in :func:`corrupt`.
    """
    u = uniform if uniform is not None else torch.zeros(x0.shape, dtype=torch.float64, device=x0.device)
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for step in range(1, schedule.steps + 1):
        t = torch.full((x0.shape[0],), step, device=x0.device)
        x_t, masked = corrupt(x0, schedule, t, mask_id, uniform=u, maskable=maskable)
        if not bool(masked.any()):
            continue
        logits = denoise(x_t).double()
        logits[..., mask_id] = float("-inf")
        nll = -torch.log_softmax(logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        positions = None if maskable is None else (maskable.long().cumsum(1) - 1).clamp_min(0)
        total += nelbo_terms(nll, masked, schedule, t, positions).sum(-1)
    return total


LOG2 = math.log(2.0)
