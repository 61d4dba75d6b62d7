"""The CtrlDiff decoder: per-sequence blocks of policy-chosen length, guided unmasking.

Each step: one network call on the canvas; guidance reweights the clean-token distribution
(``guided_logits``, gamma 0: untouched); a sequence whose block is decoded (or that has none yet)
starts a new block at its first masked position, of the length the policy picks from the step's
confidences at the next positions (clipped to the end); inside a block, the most confident masked
positions are revealed so that the block is done after ``steps_per_block`` steps.
"""

from __future__ import annotations

import math

import torch

from genloom.plugins.ctrldiff.policy import load_policy
from genloom.toolkit.canvas import ConfidenceCanvasDecoder, predict, top_k_positions
from genloom.toolkit.commit import guided_logits


def attribute_log_likelihood(tokenizer, text: str, vocab_size: int, strength: float) -> torch.Tensor:
    """(V,) log p(y | x0^i = v): log strength for the attribute's tokens, log (1 - strength) otherwise."""
    ids = set(int(i) for i in tokenizer.encode(text)) if text else set()
    ids.discard(getattr(tokenizer, "eos_id", None))  # an appended end-of-sequence id is not part of the attribute
    out = torch.full((vocab_size,), math.log(1.0 - strength), dtype=torch.float64)
    for i in ids:
        if 0 <= i < vocab_size:
            out[i] = math.log(strength)
    return out


class CtrlDiff(ConfidenceCanvasDecoder):
    def __init__(self, config, ctx, mask_id: int):
        super().__init__(config, ctx, mask_id)
        self.policy = load_policy(config.policy_path) if config.policy_path else None
        self.sample_actions = False
        self.action_seed = 0
        self.decisions: list = []
        self._classifier = None

    def classifier(self, session, vocab_size: int) -> torch.Tensor:
        if self._classifier is None or self._classifier.numel() != vocab_size:
            tok = session.tokenizer or getattr(session.model, "tokenizer", None)
            self._classifier = attribute_log_likelihood(tok, self.config.attribute_tokens, vocab_size, self.config.attribute_strength)
        return self._classifier

    def start(self, session) -> None:
        super().start(session)
        B = session.batch_size
        dev = session.prompt_ids.device
        zeros = lambda: torch.zeros(B, dtype=torch.long, device=dev)  # noqa: E731
        session.scratch.update(row_start=zeros(), row_len=zeros(), row_inner=zeros())
        self.row_steps = zeros()
        self.chosen_lengths: list[list[int]] = [[] for _ in range(B)]
        self.action_generator = torch.Generator().manual_seed(self.action_seed)

    def done(self, session) -> bool:
        return not bool((session.scratch["canvas"] == self.mask_id).any())

    def choose_lengths(self, session, confidence: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Block lengths (B,) for ``rows`` starting a block (others 0)."""
        s = session.scratch
        c = self.config
        sizes = torch.tensor(c.block_sizes, device=confidence.device)
        gen_conf = confidence[:, s["gen_start"]:].float()
        first = s["row_start"]
        window = max(c.block_sizes)
        idx = (first.reshape(-1, 1) + torch.arange(window, device=confidence.device).reshape(1, -1))
        inside = idx < gen_conf.shape[1]
        features = torch.where(inside, gen_conf.gather(1, idx.clamp_max(gen_conf.shape[1] - 1)), torch.zeros_like(idx, dtype=torch.float32))
        if self.policy is None:
            action = torch.full_like(first, 0)
            fixed = c.block_length or c.block_sizes[0]
            lengths = torch.full_like(first, fixed)
        else:
            with torch.inference_mode(False), torch.no_grad():
                logp = self.policy(features.clone())
            if self.sample_actions:
                action = torch.multinomial(logp.exp(), 1, generator=self.action_generator).squeeze(-1)
            else:
                action = logp.argmax(-1)
            lengths = sizes[action]
            if self.sample_actions:
                self.decisions.append((features[rows].clone(), action[rows].clone(), rows.clone()))
        remaining = gen_conf.shape[1] - first
        return torch.where(rows, torch.minimum(lengths, remaining), torch.zeros_like(lengths))

    def step(self, session) -> None:
        s = session.scratch
        c = self.config
        logits = self.network(session)
        if c.gamma != 0:
            logits = guided_logits(logits, self.classifier(session, logits.shape[-1]), c.gamma)
        tokens, confidence, probs = predict(logits, self.mask_id, c.temperature, session.generator)
        canvas = s["canvas"]
        P = s["gen_start"]
        masked = canvas == self.mask_id
        gen_masked = masked[:, P:]
        active = gen_masked.any(-1)
        col = torch.arange(gen_masked.shape[1], device=canvas.device).reshape(1, -1)
        in_block = (col >= s["row_start"].reshape(-1, 1)) & (col < (s["row_start"] + s["row_len"]).reshape(-1, 1))
        need = active & ~(gen_masked & in_block).any(-1)
        if bool(need.any()):
            first = torch.where(gen_masked.any(-1), gen_masked.long().argmax(-1), torch.zeros_like(s["row_start"]))
            s["row_start"] = torch.where(need, first, s["row_start"])
            lengths = self.choose_lengths(session, confidence, need)
            s["row_len"] = torch.where(need, lengths, s["row_len"])
            s["row_inner"] = torch.where(need, torch.zeros_like(s["row_inner"]), s["row_inner"])
            for b in need.nonzero().flatten().tolist():
                self.chosen_lengths[b].append(int(lengths[b]))
            in_block = (col >= s["row_start"].reshape(-1, 1)) & (col < (s["row_start"] + s["row_len"]).reshape(-1, 1))
        region = torch.zeros_like(masked)
        region[:, P:] = in_block
        allowed = masked & region
        left = (c.steps_per_block - s["row_inner"]).clamp_min(1)
        k = torch.div(allowed.sum(-1) + left - 1, left, rounding_mode="floor")  # ceil: done after steps_per_block steps
        chosen = top_k_positions(confidence, allowed, k)
        s["canvas"] = torch.where(chosen, tokens, canvas)
        s["row_inner"] = s["row_inner"] + active.long()
        self.row_steps = self.row_steps + active.long()
        s["step_index"] += 1
        session.metrics.extra.update(block_lengths=[list(x) for x in self.chosen_lengths], row_steps=self.row_steps.tolist())


def build(config, ctx) -> CtrlDiff:
    return CtrlDiff(config, ctx, ctx.mask_id)
