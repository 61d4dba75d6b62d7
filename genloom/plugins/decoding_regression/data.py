"""scikit-learn's diabetes data as a regression data set: ``{"x": (10,), "y": ()}`` samples.

A seeded random split into train/val/test; the features are standardised with the training
split's mean and std (the targets are left in their units: the number tokenizer needs no scaling).
"""

from __future__ import annotations

import numpy as np
import torch

from genloom.core.data import DataSource
from genloom.plugins.decoding_regression import DiabetesConfig


class RegressionData(DataSource):
    def __init__(self, features: np.ndarray, targets: np.ndarray, config: DiabetesConfig, name: str):
        n = len(targets)
        order = np.random.default_rng(config.split_seed).permutation(n)
        n_test, n_val = int(round(n * config.test_fraction)), int(round(n * config.val_fraction))
        index = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        mean, std = features[index["train"]].mean(0), features[index["train"]].std(0)
        scaled = (features - mean) / np.where(std > 0, std, 1.0)
        self.x = torch.tensor(scaled, dtype=torch.float32)
        self.y = torch.tensor(targets, dtype=torch.float32)
        self.index = index
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.info = {"modality": "tabular", "name": name, "num_features": features.shape[1], "sizes": {k: len(v) for k, v in index.items()}}

    def load(self, split: str, tokenizer=None, ctx=None):
        if split not in self.index:
            raise ValueError(f"unknown split '{split}' (known: train, val, test)")
        rows = torch.as_tensor(self.index[split])
        return torch.utils.data.StackDataset(x=self.x[rows], y=self.y[rows])

    def tensors(self, split: str):
        rows = torch.as_tensor(self.index[split])
        return self.x[rows], self.y[rows]


def build(config: DiabetesConfig, ctx=None) -> RegressionData:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return RegressionData(np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.float64), config, "diabetes")
