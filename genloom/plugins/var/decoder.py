"""Next-scale sampling (VAR Algorithm 2 / the released sampler) on the core's propose/verify/commit loop.

Each sequence's prompt is its class label (its last prompt id). Step k proposes all s_k^2 tokens of
scale k at once from one backbone pass over that scale's inputs against the KV cache of the coarser
scales, so a whole image takes exactly K passes. With guidance on, the batch is doubled (class,
null class) inside the cache and the logits combine as (1 + t_k) cond - t_k uncond, t_k growing
linearly over the scales (the paper's sampler) or constant. The session's processors (top-k, top-p,
temperature...) then act on every token of the scale, and the head samples.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Commit, Decoder
from genloom.core.pattern import block_causal


class NextScaleDecoder(Decoder):
    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.cfg_scale = float(config.cfg_scale)
        self.cfg_schedule = config.cfg_schedule

    def guidance(self, k: int, num_scales: int) -> float:
        """Guidance t_k of scale k (0-based)."""
        if self.cfg_schedule == "linear":
            return self.cfg_scale * (k / (num_scales - 1) if num_scales > 1 else 1.0)
        return self.cfg_scale

    def start(self, session) -> None:
        model = session.model
        head, tokenizer = model.head, model.tokenizer
        labels = session.prompt_ids[:, -1]
        if bool((labels < 0).any() or (labels >= head.num_classes).any()):
            raise ValueError(f"the next-scale decoder reads each prompt's last id as a class label in [0, {head.num_classes}); got {labels.tolist()}")
        guided = self.cfg_scale > 0
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, head.null_class)])
        lengths = tokenizer.scale_lengths
        offsets = [sum(lengths[:k]) for k in range(len(lengths))]
        session.state = model.init_state(labels.shape[0], sum(lengths))
        session.scratch.update(scale=0, f_hat=None, guided=guided, offsets=offsets, pattern=block_causal(block_lengths=lengths), scale_logits=[])
        self._pass(session, head.embed_sequence(labels, None, start=0))

    def _pass(self, session, h: torch.Tensor) -> None:
        """One backbone pass over scale k's inputs; keeps that scale's (guided) logits."""
        model, scratch = session.model, session.scratch
        session.metrics.count_forward("target")
        logits = model.head(model.backbone(h, pattern=scratch["pattern"], state=session.state))
        if scratch["guided"]:
            t = self.guidance(scratch["scale"], len(scratch["offsets"]))
            cond, uncond = logits.chunk(2)
            logits = (1.0 + t) * cond - t * uncond
        scratch["logits"] = logits
        scratch["scale_logits"].append(logits)

    def propose(self, session) -> torch.Tensor:
        return session.model.head.sample(session.process(session.scratch["logits"]), session.generator)

    def verify(self, session, proposal: torch.Tensor) -> Commit:
        return Commit.all(proposal)

    def advance(self, session, commit: Commit) -> None:
        scratch, tokenizer = session.scratch, session.model.tokenizer
        k = scratch["scale"]
        contribution = tokenizer.scale_contribution(k, commit.tokens)
        f_hat = contribution if scratch["f_hat"] is None else scratch["f_hat"] + contribution
        scratch["f_hat"], scratch["scale"] = f_hat, k + 1
        if k + 1 == len(scratch["offsets"]):
            session.finished[:] = True  # all K scales are generated
            return
        features = tokenizer.next_scale_input(f_hat, k + 1)
        if scratch["guided"]:
            features = torch.cat([features, features])
        self._pass(session, session.model.head.embed_sequence(None, features, start=scratch["offsets"][k + 1]))


def build_decoder(config, ctx=None) -> NextScaleDecoder:
    return NextScaleDecoder(config, ctx)
