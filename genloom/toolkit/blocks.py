"""Block diffusion adapted from an autoregressive model: the shared training pass and decoder.

SDAR, Fast-dLLM v2 and NBDiff turn a trained next-token model into a block-diffusion model. They
share three pieces, kept here:

- :class:`NoisyCleanPattern` -- one pass over ``[x_t, x_0]`` (length 2L): noisy block b sees
  itself bidirectionally and the clean blocks before it; clean block b sees clean blocks <= b.
- :func:`shifted_block_logits` -- the AR model's *shift* is kept: the prediction for position j
  is read from the output at position j - 1. Inside a block that is the noisy row j - 1; for the
  first position of a block it is the last clean token of the previous block, whose output only
  sees earlier blocks. With block size 1 every prediction is read from a clean row under causal
  attention, so the logits are exactly the AR model's (the adapted model starts where the AR
  model is). Position 0 has no prediction, as in next-token training.
- :class:`BlockDecoder` -- blocks left to right over a :class:`~genloom.toolkit.canvas_cache.BlockCache`
  of finished blocks; inside a block, every masked position whose confidence clears
  ``threshold`` is committed in parallel (at least one per step, so a block of n positions takes
  at most n steps); optionally a sub-block cache (Fast-dLLM v2) that reuses the block's keys/values
  while a sub-block is decoded. ``cache: false`` recomputes the whole context at every step
  (the reference the cache is tested against).
- :func:`convert_from_ar` -- copy a trained next-token model's weights into the block-diffusion
  model (same parameter names; the added mask token's rows: mean embedding in, zeros out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genloom.core.errors import ConfigError
from genloom.core.generation import Commit, Decoder, Session
from genloom.core.pattern import AttentionPattern, block_causal
from genloom.toolkit.canvas import predict
from genloom.toolkit.canvas_cache import BlockCache
from genloom.toolkit.commit import threshold_positions


@dataclass(frozen=True)
class NoisyCleanPattern(AttentionPattern):
    """The vectorised block-diffusion mask over ``[x_t, x_0]`` (layout indices ``0 .. 2*seq_len-1``)."""

    kind: str = "noisy_clean_blocks"
    seq_len: int = 0

    def __post_init__(self):
        if not self.block_size or self.block_size < 1 or self.seq_len < 1:
            raise ValueError("NoisyCleanPattern needs block_size >= 1 and seq_len >= 1")

    @property
    def is_causal(self) -> bool:
        return False

    def positions(self, index):
        return torch.remainder(index, self.seq_len)

    def allowed(self, q_pos, kv_pos):
        L = self.seq_len
        q_noisy, kv_noisy = q_pos < L, kv_pos < L
        qb = torch.div(torch.remainder(q_pos, L), self.block_size, rounding_mode="floor")
        kb = torch.div(torch.remainder(kv_pos, L), self.block_size, rounding_mode="floor")
        return (q_noisy & kv_noisy & (qb == kb)) | (q_noisy & ~kv_noisy & (kb < qb)) | (~q_noisy & ~kv_noisy & (kb <= qb))


@dataclass(frozen=True)
class ContextCausalPattern(NoisyCleanPattern):
    """:class:`NoisyCleanPattern` with a causal clean half (NBDiff's context-causal mask): clean tokens
    attend only to themselves and earlier clean tokens; noisy blocks as before."""

    kind: str = "noisy_clean_context_causal"

    def allowed(self, q_pos, kv_pos):
        L = self.seq_len
        q_noisy, kv_noisy = q_pos < L, kv_pos < L
        clean_causal = ~q_noisy & ~kv_noisy & (kv_pos <= q_pos)
        return (super().allowed(q_pos, kv_pos) & q_noisy) | clean_causal


def block_pass(model, x_t: torch.Tensor, x_0: torch.Tensor, block_size: int, context_causal: bool = False):
    """(noisy outputs, clean outputs), each (B, L, V), of one pass over ``[x_t, x_0]``."""
    L = x_0.shape[1]
    kind = ContextCausalPattern if context_causal else NoisyCleanPattern
    out = model(torch.cat([x_t, x_0], 1), pattern=kind(block_size=block_size, seq_len=L))
    return out[:, :L], out[:, L:]


def shifted_block_logits(model, x_t: torch.Tensor, x_0: torch.Tensor, block_size: int, *, context_causal: bool = False,
                         outputs=None) -> torch.Tensor:
    """(B, L, V) predictions for every position of ``x_0`` from one pass over ``[x_t, x_0]``, read with
    the AR shift (position 0's row is a placeholder; it is never scored). ``outputs``: the pass's
    (noisy, clean) outputs if already computed."""
    L = x_0.shape[1]
    noisy, clean = outputs if outputs is not None else block_pass(model, x_t, x_0, block_size, context_causal)
    starts = (torch.arange(L, device=x_0.device) % block_size == 0).reshape(1, -1, 1)
    prev_noisy = torch.cat([noisy[:, :1], noisy[:, :-1]], 1)
    prev_clean = torch.cat([clean[:, :1], clean[:, :-1]], 1)
    return torch.where(starts, prev_clean, prev_noisy)


def sequence_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L), scored (B, L)) from a next-token window batch: the whole window is the sequence and
    its targets ``ids[:, 1:]`` (``mask`` where given) are scored; position 0 never is."""
    ids = batch["ids"]
    mask = batch.get("mask")
    scored = torch.ones_like(ids, dtype=torch.bool)
    if mask is not None and mask.shape[1] == ids.shape[1] - 1:
        scored[:, 1:] = mask.bool()
    scored[:, 0] = False
    return ids, scored


def block_mask_rates(batch_size: int, length: int, block_size: int, low: float, high: float, *, antithetic: bool = True,
                     generator=None, device=None) -> torch.Tensor:
    """Per-token masking rate (B, L): one rate t_b ~ U[low, high] per block (stratified over the batch)."""
    n_blocks = -(-length // block_size)
    n = batch_size * n_blocks
    if antithetic:
        u = (torch.rand((), generator=generator, device=device) + torch.arange(n, device=device) / n) % 1.0
        u = u[torch.randperm(n, generator=generator, device=device)]
    else:
        u = torch.rand(n, generator=generator, device=device)
    t = (low + (high - low) * u).reshape(batch_size, n_blocks)
    return t[:, torch.arange(length, device=device) // block_size]


def masked_nll(logits: torch.Tensor, targets: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Per-position ``-log p(target)`` (B, L) with the mask token excluded from the distribution."""
    logits = logits.float().clone()
    logits[..., mask_id] = float("-inf")
    return -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# -- conversion from an AR model -------------------------------------------------------------------
@torch.no_grad()
def convert_from_ar(model, ar_model, path: str = "objective.ar_run") -> int:
    """Copy ``ar_model``'s parameters into ``model``; returns the number of tensors copied."""
    source = ar_model.state_dict()
    copied = 0
    for name, target in model.state_dict().items():
        if name.startswith("objective."):
            continue
        if name not in source:
            raise ConfigError(f"the AR model has no parameter '{name}': it must have the same backbone and head as this model", path=path)
        src = source[name].to(target.dtype)
        if src.shape == target.shape:
            target.copy_(src)
        elif src.dim() == target.dim() and src.shape[1:] == target.shape[1:] and src.shape[0] < target.shape[0]:
            n = src.shape[0]
            target[:n].copy_(src)
            target[n:] = src.mean(0, keepdim=True) if "embed" in name else 0.0
        else:
            raise ConfigError(f"parameter '{name}' has shape {tuple(src.shape)} in the AR model but {tuple(target.shape)} here", path=path)
        copied += 1
    return copied



class ConvertsFromAR:
    """Mixin for objectives that adapt a trained next-token run: call :meth:`init_conversion` in
    ``__init__`` and :meth:`maybe_convert` at the top of ``loss``. The ``converted`` buffer is saved
    with the model, so a resumed run is not reconverted over its trained weights."""

    def init_conversion(self) -> None:
        self.register_buffer("converted", torch.zeros((), dtype=torch.long))

    def maybe_convert(self, model, ar_run: str | None, path: str = "objective.ar_run") -> None:
        if not ar_run or bool(self.converted):
            return
        from genloom.core.generation import load_model

        convert_from_ar(model, load_model(ar_run), path)
        self.converted.fill_(1)


# -- decoding ----------------------------------------------------------------------------------------

class BlockDecoder(Decoder):
    """Blocks left to right, parallel threshold commits inside a block, finished blocks in a KV cache.

    ``block_size``, ``threshold`` (commit every masked position whose confidence is >= it; at least
    one per step), ``temperature`` (0: argmax), ``cache`` (False: recompute the whole context every
    step), ``sub_block`` (None: recompute the whole block every step; n: the block is decoded n
    positions at a time and, between a sub-block's first step and its last, only the rows feeding
    it are recomputed while the rest of the block's keys/values are reused), ``shift`` (read
    predictions with the AR shift; False: a BD3-style model that predicts position j at row j).
    """

    def __init__(self, config, ctx, *, mask_id: int, block_size: int, threshold: float, temperature: float = 0.0,
                 cache: bool = True, sub_block: int | None = None, shift: bool = True, clean_pattern: AttentionPattern | None = None):
        super().__init__(config, ctx)
        self.clean_pattern = clean_pattern  # None: the context is block-causal too; CAUSAL: context-causal (NBDiff)
        self.mask_id, self.block_size = int(mask_id), int(block_size)
        self.threshold, self.temperature = float(threshold), float(temperature)
        self.cache_on, self.sub_block, self.shift = bool(cache), sub_block, bool(shift)
        self.pattern = block_causal(self.block_size)
        if sub_block is not None and not cache:
            raise ValueError("the sub-block cache needs cache: true")

    # -- prefill --------------------------------------------------------------------------------
    def start(self, session: Session) -> None:
        B, P = session.prompt_ids.shape
        n = self.block_size
        lengths = session.prompt_valid.sum(1)
        if bool((lengths == 0).any()) and self.shift:
            raise ValueError("shifted block decoding needs a non-empty prompt in every row (position 0 has no prediction)")
        tail = torch.remainder(lengths, n)  # prompt tokens that do not fill a whole block start the first block
        col = torch.arange(P, device=session.device)
        is_tail = col[None, :] >= (P - tail)[:, None]
        prefix_valid = session.prompt_valid & ~is_tail
        known = torch.arange(n, device=session.device)[None, :] < tail[:, None]
        block = torch.full((B, n), self.mask_id, dtype=torch.long, device=session.device)
        for b in range(B):
            t = int(tail[b])
            if t:
                block[b, :t] = session.prompt_ids[b, P - t:]
        s = session.scratch
        s.update(block=block, known=known, carry=None, block_steps=[], positions=0)
        if self.cache_on:
            self.cache = BlockCache(session.model, n, B, P + session.max_new_tokens + 2 * n, counter=lambda k: session.metrics.count_forward("target", k),
                                    clean_pattern=self.clean_pattern)
            if bool(prefix_valid.any()):
                self.cache.commit(session.prompt_ids, prefix_valid)
        else:
            s["context"], s["context_valid"] = session.prompt_ids, prefix_valid

    # -- network calls ----------------------------------------------------------------------------
    def _shifted(self, session, out: torch.Tensor) -> torch.Tensor:
        if not self.shift:
            return out
        carry = session.scratch["carry"]
        if carry is None:
            carry = out[:, :1]  # rows whose whole first block is the prompt tail never read it
        return torch.cat([carry, out[:, :-1]], 1)

    def block_logits(self, session, block: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """Predictions for every position of ``block`` (B, n, V) against the clean context."""
        s = session.scratch
        if self.cache_on:
            out, clean = self.cache.logits(block, keep=keep)
            if clean is not None:
                s["carry"] = clean[:, -1:]
            s["positions"] = self.cache.positions
        elif self.clean_pattern is not None:  # recompute the context (its own pattern) and the block, every step
            context, context_valid = s["context"], s["context_valid"]
            state = session.model.init_state(block.shape[0], context.shape[1] + block.shape[1] + 1)
            clean = session.forward(context, state=state, valid=context_valid, pattern=self.clean_pattern)
            out = session.forward(block, state=state, pattern=self.pattern)
            s["carry"] = clean[:, -1:]
            s["positions"] += int(context_valid.sum()) + block.numel()
        else:
            ids = torch.cat([s["context"], block], 1)
            valid = torch.cat([s["context_valid"], torch.ones_like(block, dtype=torch.bool)], 1)
            full = session.forward(ids, valid=valid, pattern=self.pattern)
            out = full[:, -block.shape[1]:]
            s["carry"] = full[:, -block.shape[1] - 1:-block.shape[1]]
            s["positions"] += int(valid.sum())
        return self._shifted(session, out)

    def sub_block_logits(self, session, block: torch.Tensor, start: int, stop: int, previous: torch.Tensor) -> torch.Tensor:
        """Predictions for positions ``start:stop`` recomputed from the rows feeding them, reusing the
        kept keys/values of the rest of the block; ``previous`` (B, n, V) supplies the other positions."""
        lo = max(start - 1, 0) if self.shift else start
        hi = stop - 1 if self.shift else stop
        out = previous.clone()
        if hi > lo:
            cols = torch.arange(lo, hi, device=block.device)
            fresh = self.cache.rows(block[:, lo:hi], cols)
            if self.shift:
                out[:, lo + 1:hi + 1] = fresh
            else:
                out[:, lo:hi] = fresh
        session.scratch["positions"] = self.cache.positions
        return out

    # -- one block ----------------------------------------------------------------------------------
    def choose(self, logits, block, region, session):
        tokens, confidence, _ = predict(logits, self.mask_id, self.temperature, session.generator)
        masked = (block == self.mask_id) & region
        chosen = threshold_positions(confidence, masked, self.threshold)
        return torch.where(chosen, tokens, block)

    def propose(self, session: Session):
        s = session.scratch
        block = s["block"].clone()
        n = self.block_size
        steps = 0
        width = self.sub_block or n
        col = torch.arange(n, device=block.device).reshape(1, -1)
        for start in range(0, n, width):
            stop = min(start + width, n)
            region = (col >= start) & (col < stop)
            logits = None
            while bool(((block == self.mask_id) & region).any()):
                if self.sub_block is None:
                    logits = self.block_logits(session, block)
                elif logits is None:  # refresh: the whole block once, its keys/values kept
                    logits = self.block_logits(session, block, keep=True)
                else:
                    logits = self.sub_block_logits(session, block, start, stop, logits)
                block = self.choose(logits, block, region, session)
                steps += 1
        if self.cache_on:
            self.cache.drop_kept()
        s["block_steps"].append(steps)
        session.metrics.extra.update(block_steps=list(s["block_steps"]), positions_computed=s["positions"])
        return block

    def verify(self, session: Session, proposal) -> Commit:
        known = session.scratch["known"]
        order = torch.argsort(known.long(), dim=1, stable=True)  # the new tokens, left-aligned
        session.scratch["finished"] = proposal
        return Commit(tokens=torch.gather(proposal, 1, order), counts=(~known).sum(1))

    def advance(self, session: Session, commit: Commit) -> None:
        s = session.scratch
        block = s["finished"]
        if self.cache_on:
            self.cache.commit(block)
        else:
            s["context"] = torch.cat([s["context"], block], 1)
            s["context_valid"] = torch.cat([s["context_valid"], torch.ones_like(block, dtype=torch.bool)], 1)
        B = block.shape[0]
        s["block"] = torch.full((B, self.block_size), self.mask_id, dtype=torch.long, device=session.device)
        s["known"] = torch.zeros((B, self.block_size), dtype=torch.bool, device=session.device)
