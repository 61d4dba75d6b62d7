"""DGLM decoding on the shared loop: a (guided) diffusion proposal, then AR decoding after its soft prompt.

``start``, for the batch of prompts (the prefixes):

1. the prefix features ``c = pooled encoder(prompt)`` condition the proposal denoiser;
2. ``z`` is sampled by ``steps`` reverse steps from pure noise (ancestral, or DDIM when not
   ``stochastic``); with a classifier, each clean prediction becomes
   ``z0_hat + guidance_scale * w (target - sigma(w.z0_hat + b))`` (scale 0: unguided, exactly);
3. the decoder's state is prefilled with ``[soft(z) | prompt]`` and the last row's logits kept.

``propose``/``verify``/``advance`` are the core's plain autoregressive sampling: the soft prompt
sits in the KV cache like any prefix, so every next token is conditioned on ``z``.

The classifier (``classifier``) is fitted on first use when ``guidance_scale > 0``: the model's
encodings of ``classifier_windows`` standard-library continuations (of the training continuation
length), labelled by whether they contain ``keyword``. Assign ``decoder.classifier`` to use another.
"""

from __future__ import annotations

import torch

from genloom.core.generation import Decoder, initial_capacity

from .classifier import LogisticAttribute, keyword_labels, stdlib_continuations
from .model import dglm_backbone, run_decoder


@torch.no_grad()
def encode_texts(model, texts: list[bytes], batch_size: int = 256) -> torch.Tensor:
    """(N, latent_dim) proposals ``z`` of equal-length byte strings, through the model's tokenizer."""
    backbone = dglm_backbone(model, "encode_texts")
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        ids = [list(model.tokenizer.encode(t)) for t in texts[i : i + batch_size]]
        width = max(len(x) for x in ids)
        batch = torch.zeros(len(ids), width, dtype=torch.long)
        valid = torch.zeros(len(ids), width, dtype=torch.bool)
        for r, x in enumerate(ids):
            batch[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            valid[r, : len(x)] = True
        out.append(backbone.encode(batch.to(device), valid.to(device)))
    return torch.cat(out)


class DglmDecoder(Decoder):
    def __init__(self, config, ctx=None):
        super().__init__(config, ctx)
        self.classifier: LogisticAttribute | None = None
        """The attribute classifier guiding the proposal (fitted on first guided use if None)."""
        self.classifier_accuracy: float | None = None

    def fit_classifier(self, model, length: int) -> LogisticAttribute:
        texts = stdlib_continuations(length, self.config.classifier_windows, self.config.classifier_seed)
        labels = keyword_labels(texts, self.config.keyword)
        was_training = model.training
        model.eval()
        z = encode_texts(model, texts)
        model.train(was_training)
        self.classifier = LogisticAttribute.fit(z, labels)
        self.classifier_accuracy = self.classifier.accuracy(z.double(), labels)
        return self.classifier

    def proposal(self, session) -> torch.Tensor:
        """(B, latent_dim) semantic proposals for the session's prompts."""
        model = session.model
        backbone = dglm_backbone(model, "the dglm decoder")
        if self.classifier is None and self.config.guidance_scale > 0:
            length = self.ctx.get("continuation_length") if self.ctx is not None and hasattr(self.ctx, "get") else None
            self.fit_classifier(model, int(length or session.max_new_tokens))
        guide = self.classifier.guide(self.config.guidance_scale, self.config.target) if self.classifier is not None else None
        with torch.no_grad():
            condition = backbone.prefix_features(session.prompt_ids, session.prompt_valid)
            result = backbone.sample_proposal(condition, self.config.steps, stochastic=self.config.stochastic, generator=session.generator, guide=guide)
        session.metrics.count_forward("proposal-denoiser", result.passes)
        return result.x

    def start(self, session) -> None:
        model = session.model
        backbone = dglm_backbone(model, "the dglm decoder")
        z = self.proposal(session)
        session.scratch["z"] = z
        session.state = model.init_state(session.batch_size, initial_capacity(session) + backbone.prompt_vectors)
        h, valid = backbone.decoder_inputs(z, model.head.embed(session.prompt_ids), session.prompt_valid)
        session.metrics.count_forward("target")
        logits = run_decoder(model, h, valid, session.state)
        session.scratch["next_logits"] = logits[:, -1]
        if self.classifier is not None:
            session.metrics.extra["proposal_attribute_rate"] = float((self.classifier.probability(z.double()) > 0.5).double().mean())


def build(config, ctx):
    return DglmDecoder(config, ctx)
