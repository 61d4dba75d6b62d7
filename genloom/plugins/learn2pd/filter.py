"""The Learn2PD filter: features, labels from base-decoder runs, training, saving.

Labels: a run of the base decoder records, at every step, the features and the prediction of each
masked position of the current block; once the run is over, the label of a record is 1 exactly
when that prediction equals the token finally decoded at that position.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

N_FEATURES = 5


def features(probs: torch.Tensor, masked: torch.Tensor, region: torch.Tensor, gen_start: int) -> torch.Tensor:
    """(B, L, 5) float32: confidence, top-1 minus top-2, entropy / log V, position in the block (0..1),
    fraction of the generated region still masked."""
    top = probs.topk(2, dim=-1).values
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1) / math.log(probs.shape[-1])
    L = probs.shape[1]
    pos = torch.arange(L, device=probs.device).reshape(1, -1).expand(region.shape[0] if region.shape[0] > 1 else probs.shape[0], L).to(torch.float64)
    region = region.expand(probs.shape[0], L)
    first = torch.where(region, pos, torch.full_like(pos, float("inf"))).min(-1, keepdim=True).values
    last = torch.where(region, pos, torch.full_like(pos, -1.0)).max(-1, keepdim=True).values
    relative = ((pos - first) / (last - first).clamp_min(1.0)).clamp(0.0, 1.0)
    left = masked[:, gen_start:].float().mean(-1, keepdim=True).expand(-1, L).to(torch.float64)
    return torch.stack([top[..., 0], top[..., 0] - top[..., 1], entropy, relative, left], -1).float()


class Filter(nn.Module):
    """A two-layer MLP: features (..., 5) -> probability that the current prediction is final."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x).squeeze(-1))


def labels_from_run(predictions: list[torch.Tensor], masks: list[torch.Tensor], final: torch.Tensor) -> list[torch.Tensor]:
    """Per recorded step: 1 where the masked position's prediction equals the final token (float, NaN elsewhere)."""
    out = []
    for pred, m in zip(predictions, masks):
        lab = (pred == final).float()
        out.append(torch.where(m, lab, torch.full_like(lab, float("nan"))))
    return out


@torch.no_grad()
def collect(built, prompts, max_new_tokens: int, node: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the base decoder (``learn2pd`` without filter or EoTP unless ``node`` says otherwise) and
    return (features (N, 5), labels (N,)) for every masked position of every step's block."""
    from genloom.core.generation import run

    dec = built.ctx.build("decoder", {"name": "learn2pd", "end_of_text": False, **(node or {})})
    dec.record = True
    res = run(built.model, prompts, dec, max_new_tokens=max_new_tokens)
    final = dec.final_canvas
    labels = labels_from_run(dec.recorded_predictions, dec.recorded_masks, final)
    X = torch.cat([f[m] for f, m in zip(dec.recorded_features, dec.recorded_masks)])
    y = torch.cat([lab[m] for lab, m in zip(labels, dec.recorded_masks)])
    del res
    return X, y


def train_filter(X: torch.Tensor, y: torch.Tensor, *, hidden: int = 32, epochs: int = 200, lr: float = 1e-2, seed: int = 0) -> Filter:
    """Fit the filter with binary cross-entropy (full batch, Adam)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        model = Filter(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        loss = nn.functional.binary_cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def save_filter(model: Filter, path) -> None:
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"hidden": str(model.hidden)})


def load_filter(path) -> Filter:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from genloom.core.errors import ConfigError

    if not Path(path).exists():
        raise ConfigError(f"learn2pd filter '{path}' does not exist (train one with genloom.plugins.learn2pd.filter.train_filter)", path="decoder.filter_path")
    with safe_open(str(path), "pt") as f:
        hidden = int(f.metadata().get("hidden", 32))
    model = Filter(hidden)
    model.load_state_dict(load_file(str(path)))
    return model.eval()
