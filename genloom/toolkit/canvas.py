"""Masked-canvas decoding on the shared propose -> verify -> commit loop.

Masked-diffusion decoders (confidence-based unmasking, RADD's ancestral sampler, PC-Sampler,
Prophet, ...) decode over a fixed canvas: the left-padded prompt followed by ``max_new_tokens``
mask tokens, attended with the ``full`` pattern. Each step reveals some masked positions; the loop
commits the newly completed left prefix, so EOS, stop strings and the session's metrics work
unchanged. :class:`ConfidenceCanvasDecoder` is the confidence-based baseline; subclasses override
:meth:`~ConfidenceCanvasDecoder.score` (which positions to reveal first),
:meth:`~ConfidenceCanvasDecoder.network` (e.g. a cached network call, :mod:`genloom.toolkit.canvas_cache`)
or :meth:`~ConfidenceCanvasDecoder.step`. The parallel commit rules of :mod:`genloom.toolkit.commit`
are options of the constructor: ``threshold`` (reveal every position above it, at least one per
step; blocks then advance when they are fully decoded), ``eos_id`` (End-of-Text Prediction: fill the
masks after a fixed EOS), ``guidance`` (a callable ``(session, logits) -> log p(y | x0)`` with
``gamma``: classifier-guided reweighting).
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder
from genloom.core.pattern import FULL
from genloom.toolkit.commit import fill_after_eos, guided_logits, threshold_positions


def transfer_schedule(n_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens unmasked by each of ``steps`` steps: an even split, remainder first (B, steps)."""
    base = n_masked.reshape(-1, 1) // steps
    rem = n_masked.reshape(-1, 1) % steps
    return base + (torch.arange(steps, device=n_masked.device).reshape(1, -1) < rem).long()


def top_k_positions(score: torch.Tensor, allowed: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean (B, L): the ``k[b]`` allowed positions with the highest score; ties go leftmost."""
    score = torch.where(allowed, score, torch.tensor(float("-inf"), dtype=score.dtype, device=score.device))
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order))
    return (rank < k.reshape(-1, 1)) & allowed


def predict(logits: torch.Tensor, mask_id: int, temperature: float, generator=None):
    """Clean-token predictions (B, L), their probabilities (B, L) and the probabilities (B, L, V), float64."""
    logits = logits.double().clone()
    logits[..., mask_id] = float("-inf")  # the mask is never a clean token
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
        gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
        tokens = (logits / temperature + gumbel).argmax(-1)
    else:
        tokens = logits.argmax(-1)
    return tokens, probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), probs


def prefix_commit(canvas: torch.Tensor, gen_start: int, committed: torch.Tensor, mask_id: int) -> Commit:
    """Commit the newly completed left prefix of the generated region of each row."""
    gen = canvas[:, gen_start:]
    prefix = (gen != mask_id).long().cumprod(-1).sum(-1)
    counts = (prefix - committed).clamp_min(0)
    width = int(counts.max()) if counts.numel() else 0
    idx = (committed.reshape(-1, 1) + torch.arange(width, device=canvas.device).reshape(1, -1)).clamp_max(gen.shape[1] - 1)
    return Commit(gen.gather(1, idx) if width else gen[:, :0], counts)


def init_canvas(session, mask_id: int) -> None:
    """Put the canvas into ``session.scratch``: ``canvas`` (prompt + ``max_new_tokens`` masks),
    ``canvas_valid``, ``gen_start`` (where generation starts) and ``committed`` (per row)."""
    prompt, valid = session.prompt_ids, session.prompt_valid
    B, P = prompt.shape
    masks = torch.full((B, session.max_new_tokens), mask_id, dtype=prompt.dtype, device=prompt.device)
    session.scratch.update(
        canvas=torch.cat([prompt, masks], 1),
        canvas_valid=torch.cat([valid, torch.ones_like(masks, dtype=torch.bool)], 1),
        gen_start=P,
        committed=torch.zeros(B, dtype=torch.long, device=prompt.device),
    )


def canvas_logits(session, canvas: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """One counted full-attention network call on ``canvas``; the processors apply to the generated
    part. ``rows`` (B,) bool: ``canvas`` holds only these rows of the batch (a sub-batch call)."""
    s = session.scratch
    valid = s["canvas_valid"] if rows is None else s["canvas_valid"][rows]
    logits = session.forward(canvas, valid=valid, pattern=FULL)
    if session.processors:
        P = s["gen_start"]
        history = session.history() if rows is None else session.history()[rows]
        logits = torch.cat([logits[:, :P], session.process(logits[:, P:], history)], 1)
    return logits


class ConfidenceCanvasDecoder(Decoder):
    """The confidence-based masked-diffusion loop with an overridable position score.

    ``steps`` (None: one token per step), ``block_length`` (None: one block; blocks are decoded
    left to right, each in ``steps // n_blocks`` steps), ``temperature`` (0: argmax tokens).
    Subclasses override :meth:`score` (which masked positions to reveal) or :meth:`step`.
    """

    def __init__(self, config, ctx, mask_id: int, *, threshold: float | None = None, eos_id: int | None = None,
                 guidance=None, gamma: float = 0.0):
        super().__init__(config, ctx)
        self.mask_id = int(mask_id)
        self.threshold = threshold
        self.eos_id = eos_id
        self.guidance = guidance
        self.gamma = float(gamma)

    # -- set-up ---------------------------------------------------------------------------------
    def start(self, session) -> None:
        init_canvas(session, self.mask_id)
        G = session.max_new_tokens
        block = min(self.config.block_length or G, G)
        n_blocks = -(-G // block)
        steps_per_block = max(1, (self.config.steps or G) // n_blocks)
        session.scratch.update(block_length=block, steps_per_block=steps_per_block, total_steps=steps_per_block * n_blocks, step_index=0, schedule=None)

    # -- helpers --------------------------------------------------------------------------------
    def network(self, session) -> torch.Tensor:
        return canvas_logits(session, session.scratch["canvas"])

    def region(self, session) -> torch.Tensor:
        """(1, L) positions of the current block ((B, L) with a threshold: each row's first block with masks)."""
        s = session.scratch
        if self.threshold is not None:
            return self.first_open_block(session)
        block = s["step_index"] // s["steps_per_block"]
        start = s["gen_start"] + block * s["block_length"]
        pos = torch.arange(s["canvas"].shape[1], device=s["canvas"].device)
        return ((pos >= start) & (pos < start + s["block_length"])).reshape(1, -1)

    def first_open_block(self, session) -> torch.Tensor:
        """(B, L): per row, the generated block that holds its first masked position."""
        s = session.scratch
        canvas, start, size = s["canvas"], s["gen_start"], s["block_length"]
        gen_masked = canvas[:, start:] == self.mask_id
        first = torch.where(gen_masked.any(-1), gen_masked.long().argmax(-1), torch.zeros_like(gen_masked[:, 0], dtype=torch.long))
        block = torch.div(first, size, rounding_mode="floor").reshape(-1, 1)
        pos = torch.arange(canvas.shape[1], device=canvas.device).reshape(1, -1) - start
        return (pos >= 0) & (torch.div(pos.clamp_min(0), size, rounding_mode="floor") == block)

    def n_transfer(self, session, masked: torch.Tensor) -> torch.Tensor:
        s = session.scratch
        inner = s["step_index"] % s["steps_per_block"]
        if inner == 0:
            s["schedule"] = transfer_schedule((masked & self.region(session)).sum(-1), s["steps_per_block"])
        return s["schedule"][:, inner]

    def done(self, session) -> bool:
        s = session.scratch
        if self.threshold is not None:  # steps are not budgeted: decode until nothing is masked
            return not bool((s["canvas"] == self.mask_id).any())
        return s["step_index"] >= s["total_steps"] or not bool((s["canvas"] == self.mask_id).any())

    # -- one step -------------------------------------------------------------------------------
    def score(self, session, tokens: torch.Tensor, confidence: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Which masked positions to reveal first (higher first); the baseline: the confidence."""
        return confidence

    def choose(self, session, score: torch.Tensor, allowed: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Which allowed positions this step reveals: every one above the threshold (at least one),
        or the scheduled number with the highest score."""
        if self.threshold is not None:
            return threshold_positions(score, allowed, self.threshold)
        return top_k_positions(score, allowed, self.n_transfer(session, masked))

    def step(self, session) -> None:
        s = session.scratch
        logits = self.network(session)
        if self.guidance is not None and self.gamma != 0:
            logits = guided_logits(logits, self.guidance(session, logits), self.gamma)
        tokens, confidence, probs = predict(logits, self.mask_id, self.config.temperature, session.generator)
        masked = s["canvas"] == self.mask_id
        allowed = masked & self.region(session)
        chosen = self.choose(session, self.score(session, tokens, confidence, probs), allowed, masked)
        s["canvas"] = torch.where(chosen, tokens, s["canvas"])
        if self.eos_id is not None:
            s["canvas"], filled = fill_after_eos(s["canvas"], s["gen_start"], self.eos_id, self.mask_id)
            s["eos_filled"] = s.get("eos_filled", 0) + int(filled.sum())
        s["step_index"] += 1

    # -- the loop -------------------------------------------------------------------------------
    def propose(self, session) -> torch.Tensor:
        if not self.done(session):
            self.step(session)
        return session.scratch["canvas"]

    def verify(self, session, proposal: torch.Tensor) -> Commit:
        s = session.scratch
        return prefix_commit(proposal, s["gen_start"], s["committed"], self.mask_id)

    def advance(self, session, commit: Commit) -> None:
        s = session.scratch
        s["committed"] += commit.counts.to(s["committed"].device)
        if self.done(session) and not bool(commit.counts.any()):
            session.finished[:] = True
