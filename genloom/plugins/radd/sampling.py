"""Samplers over a fixed canvas of masked tokens (prompt tokens kept), as plain torch code.

Two per-step rules, each a small state machine the decoders drive one network call at a time:

- :class:`AncestralCanvas` -- RADD's exact reverse process of absorbing diffusion. From time
  ``t`` to ``s < t`` every masked position is unmasked independently with probability
  ``(t - s) / t`` and, if so, takes a token drawn from ``p_theta(x0^i | x_t^UM)``. Because the
  network has no time input, its output only changes when the noisy state changes: when a step
  unmasks nothing, the next step reuses the cached output (the paper's caching strategy), so the
  number of network evaluations of a sequence (its NFE) equals the number of distinct noisy states
  it visits. In a batch only the rows whose state changed are re-evaluated (one network call on
  that sub-batch). Random numbers are drawn identically with and without the cache, so both give
  the same samples.
- :class:`ConfidenceCanvas` -- the standard confidence-based masked-diffusion sampler (MaskGIT /
  LLaDA "low-confidence remasking"): each step predicts every masked token, then keeps the ``n_k``
  most confident predictions, with ``n_k`` from a linear schedule over ``steps`` (optionally
  block by block, semi-autoregressively).
"""

from __future__ import annotations

import torch

from genloom.plugins.radd.diffusion import clean_logits, time_grid
from genloom.toolkit.canvas import top_k_positions, transfer_schedule  # noqa: F401  (shared masked-canvas helpers)


def gumbel_like(shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))


class AncestralCanvas:
    """RADD's reverse-process sampler with output caching.

    ``canvas`` (B, L) holds prompt tokens and ``mask_id`` elsewhere. ``steps`` uniform time steps
    from 1 to 0; the last step unmasks whatever is left.
    """

    def __init__(self, canvas: torch.Tensor, mask_id: int, steps: int, *, cache: bool = True, eps: float = 1e-5,
                 temperature: float = 1.0, generator: torch.Generator | None = None):
        self.canvas = canvas.clone()
        self.mask_id = int(mask_id)
        self.steps = int(steps)
        self.cache = cache
        self.temperature = temperature
        self.generator = generator
        self.times = time_grid(self.steps, eps)
        self.step_index = 0
        self.cached_logits: torch.Tensor | None = None
        self.changed = torch.ones(canvas.shape[0], dtype=torch.bool, device=canvas.device)
        self.row_calls = torch.zeros(canvas.shape[0], dtype=torch.long, device=canvas.device)
        self.calls = 0

    @property
    def masked(self) -> torch.Tensor:
        return self.canvas == self.mask_id

    @property
    def done(self) -> bool:
        return self.step_index >= self.steps or not bool(self.masked.any())

    def rows_to_evaluate(self) -> torch.Tensor:
        """(B,) rows whose network output this step needs: every row with masks without the cache;
        with the cache only rows whose noisy state changed since their last evaluation."""
        pending = self.masked.any(-1)
        if not self.cache or self.cached_logits is None:
            return pending
        return pending & self.changed

    def needs_call(self) -> bool:
        """Whether this step runs the network at all."""
        return bool(self.rows_to_evaluate().any())

    def step(self, denoise) -> torch.Tensor:
        """One reverse step; ``denoise(ids, rows) -> logits`` runs the network on the rows that need it.

        ``ids`` are the canvases of the selected rows, ``rows`` the (B,) boolean selection. Returns
        the boolean (B, L) of positions unmasked in this step.
        """
        rows = self.rows_to_evaluate()
        if bool(rows.any()):
            fresh = denoise(self.canvas[rows], rows)
            self.calls += 1
            self.row_calls += rows.long()
            if self.cached_logits is None:
                self.cached_logits = fresh.new_zeros((self.canvas.shape[0], *fresh.shape[1:]))
            self.cached_logits[rows] = fresh
        logits = self.cached_logits
        t, s = self.times[self.step_index], self.times[self.step_index + 1]
        p_unmask = float((t - s) / t)
        shape = self.canvas.shape
        # draw the same random numbers whether or not the network was called
        u = torch.rand(shape, generator=self.generator, device=self.canvas.device)
        g = gumbel_like((*shape, logits.shape[-1]), self.generator, self.canvas.device)
        logp = torch.log_softmax(clean_logits(logits, self.mask_id).float() / self.temperature, dim=-1)
        tokens = (logp + g).argmax(-1)
        unmask = self.masked & (u < p_unmask)
        self.canvas = torch.where(unmask, tokens, self.canvas)
        self.changed = unmask.any(-1)
        self.step_index += 1
        return unmask


class ConfidenceCanvas:
    """The confidence-based masked-diffusion sampler (greedy max-confidence by default).

    ``gen_start`` (int): first generated position (the prompt before it is kept). The generated
    region is split into blocks of ``block_length`` (None: one block; the last block may be
    shorter) decoded left to right, each in ``steps // n_blocks`` steps (at least one).
    ``temperature`` 0 predicts the argmax token; above 0 it draws the token with Gumbel noise.
    ``remasking`` ``low_confidence`` keeps the most confident predictions; ``random`` keeps random
    ones.
    """

    def __init__(self, canvas: torch.Tensor, mask_id: int, gen_start: int, steps: int, *, block_length: int | None = None,
                 temperature: float = 0.0, remasking: str = "low_confidence", generator: torch.Generator | None = None):
        self.canvas = canvas.clone()
        self.mask_id = int(mask_id)
        self.gen_start = int(gen_start)
        length = canvas.shape[1] - self.gen_start
        self.block_length = min(block_length or length, length)
        self.n_blocks = -(-length // self.block_length)  # the last block may be shorter
        self.steps_per_block = max(1, steps // self.n_blocks)
        self.steps = self.steps_per_block * self.n_blocks
        self.temperature = temperature
        self.remasking = remasking
        self.generator = generator
        self.step_index = 0
        self.calls = 0
        self._schedule = None

    @property
    def masked(self) -> torch.Tensor:
        return self.canvas == self.mask_id

    @property
    def done(self) -> bool:
        return self.step_index >= self.steps or not bool(self.masked.any())

    def block_bounds(self) -> tuple[int, int]:
        block = self.step_index // self.steps_per_block
        start = self.gen_start + block * self.block_length
        return start, start + self.block_length

    def region(self) -> torch.Tensor:
        """Boolean (1, L): positions of the current block."""
        start, end = self.block_bounds()
        pos = torch.arange(self.canvas.shape[1], device=self.canvas.device)
        return ((pos >= start) & (pos < end)).reshape(1, -1)

    def n_transfer(self) -> torch.Tensor:
        """Tokens to unmask in this step per row (B,)."""
        inner = self.step_index % self.steps_per_block
        if inner == 0:
            n_masked = (self.masked & self.region()).sum(-1)
            self._schedule = transfer_schedule(n_masked, self.steps_per_block)
        return self._schedule[:, inner]

    def predict(self, logits: torch.Tensor):
        """Predicted tokens (B, L) and their probabilities (B, L), float64."""
        logits = clean_logits(logits, self.mask_id).double()
        probs = torch.softmax(logits, dim=-1)
        if self.temperature > 0:
            g = gumbel_like(logits.shape, self.generator, logits.device, torch.float64)
            tokens = (logits / self.temperature + g).argmax(-1)
        else:
            tokens = logits.argmax(-1)
        return tokens, probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def score(self, tokens: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        if self.remasking == "random":
            return torch.rand(confidence.shape, generator=self.generator, device=confidence.device, dtype=torch.float64)
        return confidence

    def step(self, logits: torch.Tensor) -> torch.Tensor:
        """Unmask this step's tokens given the network's ``logits`` on the current canvas."""
        self.calls += 1
        tokens, confidence = self.predict(logits)
        allowed = self.masked & self.region()
        chosen = top_k_positions(self.score(tokens, confidence), allowed, self.n_transfer())
        self.canvas = torch.where(chosen, tokens, self.canvas)
        self.step_index += 1
        return chosen
