"""Next-scale prediction (VAR Sec. 3.2): predict every token of scale k from the class and scales < k.

The sequence is [class token] + teacher-forced inputs of scales 2..K (the f_hat accumulated from
the ground-truth tokens of coarser scales, resized to each scale), length L = sum_k s_k^2; the
targets are the tokens of all K scales, so position block k predicts scale k. The attention pattern
is ``block_causal`` with ``block_lengths = (s_1^2, ..., s_K^2)``: a query sees its own scale and
every coarser one, never a finer one.
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import block_causal


class NextScaleObjective(Objective):
    def __init__(self, scales: tuple[int, ...], cond_drop: float = 0.1, label_smoothing: float = 0.0):
        super().__init__()
        self.scales = tuple(scales)
        self.scale_lengths = tuple(s * s for s in self.scales)
        self.pattern = block_causal(block_lengths=self.scale_lengths)
        self.cond_drop = cond_drop
        self.label_smoothing = label_smoothing

    def inputs(self, model, ids: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """(B, L, D) backbone input: the class start token and the teacher-forced inputs of scales 2..K."""
        with torch.no_grad():
            features = model.tokenizer.embed_scales(ids)
        return model.head.embed_sequence(labels, features)

    def logits(self, model, ids: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """(B, L, V) logits of all scales' tokens, in one block-causal pass."""
        h = model.backbone(self.inputs(model, ids, labels), pattern=self.pattern)
        return model.head(h)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["label"].long()
        with torch.no_grad():
            ids = model.tokenizer.encode(images)
        if self.training and self.cond_drop > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.cond_drop
            labels = torch.where(drop, torch.full_like(labels, model.head.null_class), labels)
        logits = self.logits(model, ids, labels)
        targets = torch.cat(ids, 1)
        nll = model.head.token_nll(logits, targets)
        if self.label_smoothing > 0:
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), label_smoothing=self.label_smoothing)
        else:
            loss = nll.mean()
        out = {
            "loss": loss,
            "_nats": nll.detach().sum(),
            "_tokens": torch.tensor(float(targets.numel())),
            "accuracy": (logits.detach().argmax(-1) == targets).float().mean(),
        }
        for k, part in enumerate(nll.detach().split(self.scale_lengths, dim=1)):
            out[f"nll_scale{k + 1}"] = part.mean()
        return out


def build_objective(config, ctx) -> NextScaleObjective:
    return NextScaleObjective(ctx.scales, config.cond_drop, config.label_smoothing)
