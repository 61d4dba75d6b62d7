"""OrthoTrans: the eigenbasis of the temporal Pearson correlation of the training windows.

``fit`` cuts the training split into every window of ``length`` steps of every variate (rows of a
(N, length) matrix), computes the Pearson correlation between the ``length`` positions and
eigendecomposes it, ``R = Q Lambda Q^T``; ``Q`` (orthogonal, columns by decreasing eigenvalue) is
kept for the lookback (``Q_in``) and the horizon (``Q_out``). Tokens are ``Q_in^T x`` per variate;
the forecast is ``Q_out y'``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genloom.core.model import Tokenizer
from genloom.plugins.olinear import OrthoTokenizerConfig


def training_windows(values: np.ndarray, length: int, instance_norm: bool = True, eps: float = 1e-5) -> np.ndarray:
    """Every window of ``length`` steps of every variate of a (T, V) array: (N, length)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    starts = np.arange(len(values) - length + 1)
    windows = np.stack([values[s:s + length] for s in starts])  # (N, length, V)
    windows = windows.transpose(0, 2, 1).reshape(-1, length)
    if instance_norm:
        windows = (windows - windows.mean(1, keepdims=True)) / np.sqrt(windows.var(1, keepdims=True) + eps)
    return windows


def orthogonal_basis(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, eigenvalues) of the Pearson correlation between the window positions, by decreasing eigenvalue."""
    correlation = np.corrcoef(windows, rowvar=False)
    correlation = np.nan_to_num(correlation, nan=0.0)
    np.fill_diagonal(correlation, 1.0)
    eigenvalues, vectors = np.linalg.eigh(correlation)
    order = np.argsort(eigenvalues)[::-1]
    return vectors[:, order], eigenvalues[order]


class OrthoTokenizer(Tokenizer):
    """``encode(x (B, L, V)) -> (Q_in^T-transformed variate tokens (B, V, L), stats)``; ``decode((B, V, H), stats) -> (B, H, V)``."""

    series = True
    vocab_size = 0
    eos_id = None

    def __init__(self, lookback: int, horizon: int, instance_norm: bool = True, eps: float = 1e-5):
        self.lookback, self.horizon, self.instance_norm, self.eps = lookback, horizon, instance_norm, eps
        self.q_in = torch.eye(lookback, dtype=torch.float64)
        self.q_out = torch.eye(horizon, dtype=torch.float64)
        self.fitted = False

    def fit(self, source, ctx=None) -> None:
        """Q_in and Q_out from the training split of ``source`` (a series data set) only."""
        if self.fitted:
            return
        begin, end = source.info["borders"]["train"]
        train = source.values[begin:end].double().numpy()
        self.fit_values(train)

    def fit_values(self, train: np.ndarray) -> None:
        self.q_in = torch.as_tensor(orthogonal_basis(training_windows(train, self.lookback, self.instance_norm, self.eps))[0])
        self.q_out = torch.as_tensor(orthogonal_basis(training_windows(train, self.horizon, self.instance_norm, self.eps))[0])
        self.fitted = True

    def encode(self, x: torch.Tensor):
        if x.dim() != 3 or x.shape[1] != self.lookback:
            raise ValueError(f"ortho tokenizer expects windows (B, {self.lookback}, V), got shape {tuple(x.shape)}")
        stats = None
        if self.instance_norm:
            mean = x.mean(dim=1, keepdim=True)
            std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)
            x = (x - mean) / std
            stats = (mean, std)
        tokens = x.transpose(1, 2) @ self.q_in.to(x)  # each variate's window x -> Q_in^T x (as a row: x^T Q_in)
        return tokens, stats

    def decode(self, outputs: torch.Tensor, stats=None) -> torch.Tensor:
        forecast = (outputs @ self.q_out.to(outputs).T).transpose(1, 2)  # y = Q_out y' per variate
        if stats is not None:
            mean, std = stats
            forecast = forecast * std + mean
        return forecast

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "orthotrans.npz", q_in=self.q_in.numpy(), q_out=self.q_out.numpy())

    def load(self, directory) -> None:
        path = Path(directory) / "orthotrans.npz"
        if path.exists():
            saved = np.load(path)
            self.q_in, self.q_out = torch.as_tensor(saved["q_in"]), torch.as_tensor(saved["q_out"])
            self.fitted = True


def build(config: OrthoTokenizerConfig, ctx=None) -> OrthoTokenizer:
    if config.lookback is None or config.horizon is None:
        config.bind(ctx)
    return OrthoTokenizer(config.lookback, config.horizon, config.instance_norm, config.eps)
