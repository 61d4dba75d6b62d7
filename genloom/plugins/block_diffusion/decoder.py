"""The BD3-LM decoder on the core's propose -> verify -> commit loop.

- ``start``: blocks are aligned to position 0 of each sequence, as in training. The prompt's whole
  blocks go into the KV cache; its tail (``len(prompt) mod block_size`` tokens) becomes the known,
  unmasked part of the first block to denoise.
- ``propose``: denoise one block by iterative unmasking (:func:`sampling.denoise_block`); each
  denoiser call runs the block against the cache and rolls the cache back, so the cache only ever
  holds clean, committed blocks.
- ``verify``: every new token of the block is kept (per-sequence counts differ only in the first
  block, by the prompt tails).
- ``advance``: remember the committed clean block; the next block's first denoiser call feeds it
  in front of the noisy block (one pass), so its keys/values join the cache at no extra forward
  pass, and only the noisy part is rolled back.

With ``cache: false`` every denoiser call recomputes the whole context ``[clean blocks, block]``
instead (the reference the tests compare the cached path with).
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder, Session
from genloom.core.pattern import block_causal
from genloom.plugins.block_diffusion.sampling import denoise_block


class BlockDiffusionDecoder(Decoder):
    def __init__(self, config, ctx=None, *, mask_id: int, block_size: int):
        super().__init__(config, ctx)
        self.mask_id = int(mask_id)
        self.block_size = int(block_size)
        self.steps = config.steps or self.block_size
        self.pattern = block_causal(self.block_size)

    # -- prefill -----------------------------------------------------------------------------
    def start(self, session: Session) -> None:
        B, P = session.prompt_ids.shape
        n = self.block_size
        lengths = session.prompt_valid.sum(1)
        tail = torch.remainder(lengths, n)  # prompt tokens that do not fill a whole block
        # left padding: the tail is the last `tail[b]` columns of row b
        col = torch.arange(P, device=session.device)
        is_tail = col[None, :] >= (P - tail)[:, None]
        prefix_valid = session.prompt_valid & ~is_tail
        block = torch.full((B, n), self.mask_id, dtype=torch.long, device=session.device)
        known = torch.arange(n, device=session.device)[None, :] < tail[:, None]
        tail_ids = torch.zeros((B, n), dtype=torch.long, device=session.device)
        for b in range(B):
            t = int(tail[b])
            if t:
                tail_ids[b, :t] = session.prompt_ids[b, P - t:]
        block = torch.where(known, tail_ids, block)
        scratch = session.scratch
        scratch["block"], scratch["known"] = block, known
        if self.config.cache:
            capacity = P + session.max_new_tokens + 2 * n
            session.state = session.model.init_state(B, capacity)
            if bool(prefix_valid.any()):
                session.forward(session.prompt_ids, state=session.state, valid=prefix_valid, pattern=self.pattern)
        else:
            # the clean context as a left-padded tensor, recomputed at every denoiser call
            scratch["context"], scratch["context_valid"] = session.prompt_ids, prefix_valid

    # -- one block ---------------------------------------------------------------------------
    def _logits_fn(self, session: Session):
        scratch = session.scratch
        if self.config.cache:
            state = session.state
            before = [state.lengths.clone()]

            def logits_fn(block):
                # the previous block's clean keys/values ride along with the first denoiser call
                pending = scratch.pop("pending", None)
                if pending is None:
                    out = session.forward(block, state=state, pattern=self.pattern)
                else:
                    out = session.forward(torch.cat([pending, block], dim=1), state=state, pattern=self.pattern)[:, pending.shape[1]:]
                    before[0] = before[0] + pending.shape[1]
                state.rollback(before[0])
                return out

        else:
            def logits_fn(block):
                context, context_valid = scratch["context"], scratch["context_valid"]
                ids = torch.cat([context, block], dim=1)
                valid = torch.cat([context_valid, torch.ones_like(block, dtype=torch.bool)], dim=1)
                return session.forward(ids, valid=valid, pattern=self.pattern)[:, -block.shape[1]:]

        return logits_fn

    def propose(self, session: Session):
        scratch = session.scratch
        block, forward_passes = denoise_block(
            self._logits_fn(session),
            scratch["block"],
            mask_id=self.mask_id,
            steps=self.steps,
            generator=session.generator,
            process=session.process if session.processors else None,
            greedy=self.config.greedy,
            sample=session.model.head.sample,
        )
        scratch["denoiser_calls"] = scratch.get("denoiser_calls", 0) + forward_passes
        return block

    def verify(self, session: Session, proposal) -> Commit:
        known = session.scratch["known"]
        counts = (~known).sum(1)
        # left-align each row's new tokens (the known tail sits in front of them)
        order = torch.argsort(known.long(), dim=1, stable=True)
        tokens = torch.gather(proposal, 1, order)
        session.scratch["finished_block"] = proposal
        return Commit(tokens=tokens, counts=counts)

    def advance(self, session: Session, commit: Commit) -> None:
        scratch = session.scratch
        block = scratch["finished_block"]
        if self.config.cache:
            scratch["pending"] = block  # cached by the next block's first denoiser call (no extra pass)
        else:
            scratch["context"] = torch.cat([scratch["context"], block], dim=1)
            scratch["context_valid"] = torch.cat([scratch["context_valid"], torch.ones_like(block, dtype=torch.bool)], dim=1)
        B = block.shape[0]
        scratch["block"] = torch.full((B, self.block_size), self.mask_id, dtype=torch.long, device=session.device)
        scratch["known"] = torch.zeros((B, self.block_size), dtype=torch.bool, device=session.device)


def build(config, ctx):
    mask_id = ctx.get("mask_id")
    if mask_id is None:
        mask_id = ctx.add_special_token("mask")
    block_size = config.block_size or ctx.get("block_size")
    if block_size is None:
        from genloom.core.errors import ConfigError

        raise ConfigError("the block-diffusion decoder needs block_size (set it, or use the block-diffusion objective, which publishes it)", path="decoder.block_size")
    return BlockDiffusionDecoder(config, ctx, mask_id=mask_id, block_size=block_size)
