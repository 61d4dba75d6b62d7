"""``ising-bits``: d-bit vectors from a one-dimensional Ising chain, with their exact law.

``p(x) ∝ exp(coupling * sum_i s_i s_{i+1} + field * sum_i s_i)`` with spins ``s = 2x - 1`` on
``{0, 1}^d``, normalised by enumerating all ``2^d`` states (``d <= 16``). Samples are drawn from
the exact law with a seeded generator, one stream per split. :meth:`IsingBits.log_probs` gives the
exact log-probability of every state (index ``sum_i x_i 2^(d-1-i)``), for tests and figures.
"""

from __future__ import annotations

import torch

from genloom.core.data import DataSource


def all_states(bits: int) -> torch.Tensor:
    """(2^d, d) every bit vector, in binary counting order (the first bit is the most significant)."""
    index = torch.arange(2**bits)
    return (index[:, None] >> torch.arange(bits - 1, -1, -1)) & 1


class BitSamples(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"ids": self.ids[i]}


class IsingBits(DataSource):
    def __init__(self, config):
        self.config = config
        self.batch_size = config.batch_size
        self.info = {"modality": "binary", "seq_len": config.bits}

    def log_probs(self) -> torch.Tensor:
        """(2^d,) the exact log-probability of every state (float64)."""
        cfg = self.config
        s = 2.0 * all_states(cfg.bits).double() - 1.0
        energy = cfg.coupling * (s[:, 1:] * s[:, :-1]).sum(1) + cfg.field * s.sum(1)
        return energy - energy.logsumexp(0)

    def load(self, split, tokenizer, ctx):
        cfg = self.config
        size = cfg.train_size if split == "train" else cfg.eval_size
        g = torch.Generator().manual_seed(cfg.seed * 3 + ("train", "val", "test").index(split))
        index = torch.multinomial(self.log_probs().exp(), size, replacement=True, generator=g)
        return BitSamples(all_states(cfg.bits)[index])


def build(config, ctx):
    return IsingBits(config)
