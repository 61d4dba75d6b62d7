"""The ``code-var`` decoder: the large VAR model drafts the coarse scales, a small one refines the rest.

Each sequence's prompt is its class label (its last prompt id), as for VAR's ``next-scale``
decoder. One scale per step of the core's propose/verify/commit loop:

1. scales ``1..N_draft``: the large model (the session's model, the *drafter*) runs one pass per
   scale over that scale's inputs against its KV cache, exactly as next-scale sampling does, so
   with ``N_draft = K`` the decoder is plain next-scale sampling of the large model;
2. at the switch, the small model (the *refiner*) runs ONE pass over the class token and the
   inputs of scales ``2..N_draft + 1`` (the f_hat of the drafted scales, resized to each scale)
   under the block-causal mask, filling its own KV cache, and predicts scale ``N_draft + 1``;
3. scales ``N_draft + 2..K``: the refiner, one pass per scale against its cache.

Classifier-free guidance doubles the batch (class, null class) in both models; scale k's logits
are ``(1 + t_k) cond - t_k uncond`` with the guidance of the next-scale sampler. The session's
processors act on every token of a scale; the head samples. The large model runs exactly
``N_draft`` passes, the refiner ``K - N_draft``.
"""

from __future__ import annotations

import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import Commit, Decoder
from genloom.core.pattern import block_causal
from genloom.toolkit.draft import load_draft


class CollaborativeDecoder(Decoder):
    """Collaborative decoding of a VAR model pair (module docstring)."""

    def __init__(self, config, ctx=None, refiner=None):
        super().__init__(config, ctx)
        self.draft_scales = config.draft_scales
        self.cfg_scale = float(config.cfg_scale)
        self.cfg_schedule = config.cfg_schedule
        self._refiner = refiner
        if refiner is None and isinstance(config.refiner, dict):
            self._refiner = load_draft(config.refiner, ctx, config.seed, path="decoder.refiner")

    @property
    def refiner(self):
        """The small VAR model (loaded on first use when the config names a path)."""
        if self._refiner is None:
            self._refiner = load_draft(self.config.refiner, self.ctx, self.config.seed, path="decoder.refiner")
        return self._refiner

    @property
    def exact(self) -> str | None:
        return None  # the refiner's scales follow the small model, not the large one

    def guidance(self, k: int, num_scales: int) -> float:
        """Guidance t_k of scale k (0-based): linear growth over the scales, or constant."""
        if self.cfg_schedule == "linear":
            return self.cfg_scale * (k / (num_scales - 1) if num_scales > 1 else 1.0)
        return self.cfg_scale

    def start(self, session) -> None:
        model = session.model
        head, tokenizer = model.head, model.tokenizer
        labels = session.prompt_ids[:, -1]
        if bool((labels < 0).any() or (labels >= head.num_classes).any()):
            raise GenerationError(f"the code-var decoder reads each prompt's last id as a class label in [0, {head.num_classes}); got {labels.tolist()}")
        lengths = tokenizer.scale_lengths
        n_draft = min(self.draft_scales, len(lengths))
        if n_draft < len(lengths):
            self._check_refiner(model)
        guided = self.cfg_scale > 0
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, head.null_class)])
        offsets = [sum(lengths[:k]) for k in range(len(lengths))]
        session.state = model.init_state(labels.shape[0], sum(lengths))
        session.scratch.update(scale=0, f_hat=None, guided=guided, offsets=offsets, lengths=lengths, labels=labels, n_draft=n_draft,
                               pattern=block_causal(block_lengths=lengths), scale_logits=[], inputs=[], active=model)
        self._pass(session, model, session.state, head.embed_sequence(labels, None, start=0), "target")

    def _check_refiner(self, model) -> None:
        refiner = self.refiner.to(next(model.parameters()).device)
        if refiner.ctx.get("scales") is not None and tuple(refiner.ctx.scales) != tuple(model.tokenizer.scales):
            raise GenerationError(f"the refiner models scales {tuple(refiner.ctx.scales)}, the drafter {tuple(model.tokenizer.scales)}: they must be the same")
        mine, theirs = model.tokenizer.codebook.weight, getattr(getattr(refiner.tokenizer, "codebook", None), "weight", None)
        if theirs is not None and not torch.equal(theirs.to(mine.device), mine):
            raise GenerationError("the refiner's tokenizer differs from the drafter's (another codebook): train both on one fitted var-vq tokenizer")

    def _pass(self, session, model, state, h: torch.Tensor, name: str) -> None:
        """One backbone pass; keeps the (guided) logits of the current scale (the last block of ``h``)."""
        scratch = session.scratch
        session.metrics.count_forward(name)
        logits = model.head(model.backbone(h, pattern=scratch["pattern"], state=state))[:, -scratch["lengths"][scratch["scale"]]:]
        if scratch["guided"]:
            t = self.guidance(scratch["scale"], len(scratch["lengths"]))
            cond, uncond = logits.chunk(2)
            logits = (1.0 + t) * cond - t * uncond
        scratch["logits"] = logits
        scratch["scale_logits"].append(logits)

    def propose(self, session) -> torch.Tensor:
        return session.scratch["active"].head.sample(session.process(session.scratch["logits"]), session.generator)

    def verify(self, session, proposal: torch.Tensor) -> Commit:
        return Commit.all(proposal)

    def advance(self, session, commit: Commit) -> None:
        scratch, tokenizer = session.scratch, session.model.tokenizer
        k = scratch["scale"]
        contribution = tokenizer.scale_contribution(k, commit.tokens)
        f_hat = contribution if scratch["f_hat"] is None else scratch["f_hat"] + contribution
        scratch["f_hat"], scratch["scale"] = f_hat, k + 1
        if k + 1 == len(scratch["lengths"]):
            session.finished[:] = True  # all K scales are generated
            return
        features = tokenizer.next_scale_input(f_hat, k + 1)
        if scratch["guided"]:
            features = torch.cat([features, features])
        scratch["inputs"].append(features)
        if k + 1 < scratch["n_draft"]:  # the drafter continues
            model = session.model
            self._pass(session, model, session.state, model.head.embed_sequence(None, features, start=scratch["offsets"][k + 1]), "target")
        elif k + 1 == scratch["n_draft"]:  # switch: the refiner reads every drafted scale in one pass
            refiner = self.refiner
            scratch["active"] = refiner
            scratch["refiner_state"] = refiner.init_state(scratch["labels"].shape[0], sum(scratch["lengths"]))
            h = refiner.head.embed_sequence(scratch["labels"], torch.cat(scratch["inputs"], 1), start=0)
            self._pass(session, refiner, scratch["refiner_state"], h, "refiner")
        else:  # the refiner continues
            refiner = scratch["active"]
            self._pass(session, refiner, scratch["refiner_state"], refiner.head.embed_sequence(None, features, start=scratch["offsets"][k + 1]), "refiner")


def build(config, ctx):
    return CollaborativeDecoder(config, ctx)
