"""The ``farzi`` objective: the outer loss of data distillation, differentiated by Adam's reverse mode."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch.nn import functional as F

from genloom.core.model import Objective
from genloom.plugins.farzi import FarziObjectiveConfig
from genloom.plugins.farzi.adam import AdamHyper, adam_forward, adam_reverse, grad_enabled
from genloom.plugins.farzi.summary import FarziSummary, ar_init, ar_loss


class _MetaLoss(torch.autograd.Function):
    """F(X) = real-data loss of the learner trained by Adam on X; backward by ``adam_reverse`` (constant memory)."""

    @staticmethod
    def forward(ctx, data, real, theta0, order, steps, hyper):
        loss = functools.partial(ar_loss, order=order)
        data64, real64 = data.detach().double(), real.double()
        theta, m, v = adam_forward(loss, theta0, data64, steps, hyper)
        with grad_enabled():
            p = theta.clone().requires_grad_(True)
            outer = loss(p, real64.clone())
            theta_bar = torch.autograd.grad(outer, p)[0]
        ctx.save_for_backward(data64, theta_bar, theta, m, v)
        ctx.order, ctx.steps, ctx.hyper, ctx.dtype = order, steps, hyper, data.dtype
        return outer.detach().to(data.dtype)

    @staticmethod
    def backward(ctx, grad):
        data64, theta_bar, theta, m, v = ctx.saved_tensors
        data_bar, _ = adam_reverse(functools.partial(ar_loss, order=ctx.order), theta_bar, theta, m, v, data64, ctx.steps, ctx.hyper)
        return (grad * data_bar).to(ctx.dtype), None, None, None, None, None


class FarziObjective(Objective):
    def __init__(self, config: FarziObjectiveConfig, vocab: int):
        super().__init__()
        self.config, self.vocab = config, vocab
        generator = torch.Generator().manual_seed(config.seed)
        self.summary = FarziSummary(config.n_synthetic, config.length, vocab, config.rank, generator)
        self.hyper = AdamHyper(lr=config.inner_lr)
        self.register_buffer("outer_steps", torch.zeros((), dtype=torch.long))

    def learner_init(self) -> torch.Tensor:
        """A fresh initialisation of the inner learner (a new one per training call, a fixed one in eval)."""
        offset = int(self.outer_steps) if self.training else -1
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + offset)
        return ar_init(self.vocab, self.config.order, generator, dtype=torch.float64)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        ids = batch["ids"]
        if ids.max() >= self.vocab:
            raise ValueError(f"farzi: token id {int(ids.max())} outside the vocabulary of {self.vocab}")
        real = F.one_hot(ids, self.vocab).to(self.summary.latent.dtype)
        outer = _MetaLoss.apply(self.summary.data(), real, self.learner_init(), self.config.order, self.config.inner_steps, self.hyper)
        if self.training:
            self.outer_steps += 1
        return {"loss": outer, "real_ce": outer.detach()}

    def generate_samples(self, gen, *, n: int = 1, seed=None, out=None, decoder=None) -> Path:
        """Write the distilled sequences: per synthetic sequence the most likely tokens, decoded, and the rows' top probability."""
        import json

        with torch.no_grad():
            data = self.summary.data()
        top, ids = data.max(dim=-1)
        rows = []
        for i in range(data.shape[0]):
            tokens = ids[i].tolist()
            text = gen.model.tokenizer.decode(tokens) if hasattr(gen.model.tokenizer, "decode") else None
            rows.append({"sequence": i, "ids": tokens, "text": text, "mean_top_probability": float(top[i].mean())})
        path = Path(out) if out else Path(gen.run_dir or ".") / "farzi_data.json"
        if path.suffix != ".json":
            path = path / "farzi_data.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1, default=str))
        return path


def build(config: FarziObjectiveConfig, ctx) -> FarziObjective:
    if config.length is None:
        config.bind(ctx)
    return FarziObjective(config, int(ctx.vocab_size))
