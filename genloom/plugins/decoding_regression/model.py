"""The number decoder: features as a prefix token, number tokens after it, constrained logits.

Training (``number-ce``): the sequence ``[features, t_1, ..., t_{K+1}]`` goes through the causal
backbone and position i predicts t_{i+1} (t_1 = sign, t_2 = exponent, then digits) with the
cross-entropy. Prediction: the K + 2 tokens are sampled one by one from the logits restricted to
the tokens allowed at that position, the strings are decoded to numbers, and their mean is the
point estimate.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Head, Objective
from genloom.core.pattern import CAUSAL
from genloom.plugins.decoding_regression import NumberCeConfig, NumberDecoderHeadConfig


class NumberDecoderHead(Head):
    def __init__(self, features: int, d_model: int, vocab_size: int, allowed: torch.Tensor):
        super().__init__()
        self.features = nn.Linear(features, d_model)
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.output = nn.Linear(d_model, vocab_size)
        self.register_buffer("allowed", allowed, persistent=False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def embed_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """(B, features) -> (B, 1, d_model)."""
        return self.features(x.to(self.features.weight.dtype))[:, None]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits for the next number token at each position, -inf where that token is not allowed."""
        logits = self.output(h)
        allowed = self.allowed[: h.shape[1]]
        return logits.masked_fill(~allowed, float("-inf"))


class NumberCe(Objective):
    pattern = CAUSAL

    def __init__(self, num_samples: int = 64):
        super().__init__()
        self.num_samples = num_samples

    def logits(self, model, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, n + 1, vocab) for the prefix followed by ``ids`` (B, n)."""
        h = torch.cat([model.head.embed_prefix(x), model.head.embed(ids)], dim=1)
        return model.head(model.backbone(h, pattern=CAUSAL))

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        targets = model.tokenizer.encode_batch(batch["y"]).to(batch["x"].device)  # (B, K + 2)
        logits = self.logits(model, batch["x"], targets[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return {"loss": loss, "sign_exponent_accuracy": (logits[:, :2].argmax(-1) == targets[:, :2]).float().mean()}

    @torch.no_grad()
    def sample_numbers(self, model, x: torch.Tensor, num_samples: int | None = None, generator: torch.Generator | None = None,
                       temperature: float = 1.0) -> torch.Tensor:
        """(num_samples, B) numbers decoded by constrained ancestral sampling."""
        n = num_samples or self.num_samples
        batch = x.shape[0]
        repeated = x.repeat_interleave(n, dim=0)
        ids = torch.zeros(batch * n, 0, dtype=torch.long, device=x.device)
        for _ in range(model.tokenizer.length):
            logits = self.logits(model, repeated, ids)[:, -1] / temperature
            token = torch.multinomial(torch.softmax(logits.double(), -1), 1, generator=generator)
            ids = torch.cat([ids, token], dim=1)
        return model.tokenizer.decode_batch(ids.cpu()).view(batch, n).T

    def predict(self, model, x: torch.Tensor, num_samples: int | None = None, generator=None) -> torch.Tensor:
        """The mean of decoded samples (B,)."""
        return self.sample_numbers(model, x, num_samples, generator).mean(0)


def build_head(config: NumberDecoderHeadConfig, ctx) -> NumberDecoderHead:
    if config.features is None or config.d_model is None:
        config.bind(ctx)
    tokenizer = ctx.tokenizer
    return NumberDecoderHead(config.features, config.d_model, tokenizer.vocab_size, tokenizer.allowed())


def build_objective(config: NumberCeConfig, ctx=None) -> NumberCe:
    return NumberCe(config.num_samples)
