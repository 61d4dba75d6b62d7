"""EntroPE's Entropy-based Dynamic Patcher: a frozen next-bin model and entropy-threshold boundaries.

``H_t`` is the entropy of the entropy model's distribution of bin(x_t) given bin(x_0..x_{t-1})
(a begin-of-sequence symbol before x_0); ``b_t = 1`` for t = 0 and where ``H_t > threshold``.
Patch k covers the steps from its boundary to the step before the next one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from genloom.plugins.entrope import EntropyPatchConfig
from genloom.toolkit.forecasting_patches import PatchTokenizer, fold_channels


class EntropyModel(nn.Module):
    """Causal next-bin model: logits (B, L, n_bins) of bin(x_t) given the bins before t."""

    def __init__(self, n_bins: int, hidden: int):
        super().__init__()
        self.n_bins = n_bins
        self.embedding = nn.Embedding(n_bins + 1, hidden)  # the last id is begin-of-sequence
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_bins)

    def forward(self, bins: torch.Tensor) -> torch.Tensor:
        shifted = torch.cat([torch.full_like(bins[:, :1], self.n_bins), bins[:, :-1]], dim=1)
        h, _ = self.rnn(self.embedding(shifted))
        return self.out(h)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the categorical distributions given by ``logits`` (..., K)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def boundaries_from_entropy(entropies: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, L) flags: 1 at t = 0 and where the conditional entropy exceeds the threshold."""
    flags = entropies > threshold
    flags[:, 0] = True
    return flags


def patch_ids(flags: torch.Tensor) -> torch.Tensor:
    """(B, L) index of the patch each step belongs to (0-based, the patches in order)."""
    return flags.long().cumsum(dim=1) - 1


def patch_spans(flags: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per sequence, the [start, end) step range of every patch."""
    spans = []
    for row in flags.bool():
        starts = torch.nonzero(row).flatten().tolist()
        spans.append(list(zip(starts, starts[1:] + [row.shape[0]])))
    return spans


class EntropyPatchTokenizer(PatchTokenizer):
    """``encode(x (B, L, V)) -> (tokens (B*V, L, 2): value and boundary flag, stats)``; ``decode((B*V, 1, H), stats) -> (B, H, V)``."""

    def __init__(self, config: EntropyPatchConfig):
        super().__init__(1, config.horizon, config.instance_norm, config.eps)
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = EntropyModel(config.n_bins, config.hidden).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.threshold = config.threshold
        self.fitted = False

    def bins(self, values: torch.Tensor) -> torch.Tensor:
        clip, n = self.config.clip, self.config.n_bins
        scaled = (values.clamp(-clip, clip) + clip) / (2 * clip) * n
        return scaled.floor().long().clamp(0, n - 1)

    def entropies(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B', L) normalised sequences -> (B', L) conditional entropies H_t of the frozen entropy model."""
        with torch.no_grad():
            return entropy(self.model(self.bins(sequences)))

    def boundaries(self, sequences: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise ValueError("entropy-patch: the tokenizer is not fitted (no threshold); fit it on a data set or set threshold")
        return boundaries_from_entropy(self.entropies(sequences), self.threshold)

    def encode(self, x: torch.Tensor):
        normalised, stats = self.normalise(x)
        sequences = fold_channels(normalised)  # (B*V, L)
        flags = self.boundaries(sequences).to(sequences.dtype)
        return torch.stack([sequences, flags], dim=-1), stats

    # -- fitting on the training split ------------------------------------------------------

    def fit(self, source, ctx=None) -> None:
        if self.fitted:
            return
        begin, end = source.info["borders"]["train"]
        self.fit_values(source.values[begin:end].double())

    def fit_values(self, train: torch.Tensor) -> None:
        """Train the entropy model on every lookback window of ``train`` (T, V); set the threshold."""
        length = self.config.lookback
        windows = train.unfold(0, length, 1).permute(0, 2, 1)  # (N, L, V)
        sequences = fold_channels(self.normalise(windows)[0]).float()
        bins = self.bins(sequences)
        generator = torch.Generator().manual_seed(self.config.seed)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.train()
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.fit_lr)
        for _ in range(self.config.fit_steps):
            batch = bins[torch.randint(0, bins.shape[0], (min(64, bins.shape[0]),), generator=generator)]
            loss = F.cross_entropy(self.model(batch).flatten(0, 1), batch.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.config.threshold is None:
            self.threshold = float(torch.quantile(self.entropies(sequences)[:, 1:].flatten(), self.config.threshold_quantile))
        self.fitted = True

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.model.state_dict(), "threshold": self.threshold}, directory / "entropy_model.pt")

    def load(self, directory) -> None:
        path = Path(directory) / "entropy_model.pt"
        if path.exists():
            saved = torch.load(path, weights_only=True)
            self.model.load_state_dict(saved["model"])
            self.threshold = saved["threshold"]
            self.fitted = True


def build(config: EntropyPatchConfig, ctx=None) -> EntropyPatchTokenizer:
    if ctx is not None:
        config.bind(ctx)
    return EntropyPatchTokenizer(config)
