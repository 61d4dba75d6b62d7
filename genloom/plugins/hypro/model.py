"""HYPRO: base-model proposals, an energy over whole continuations, resampling with softmax(-E).

Training (``Hypro.loss``), for windows ``ids`` (B, L + 1): the base objective's loss, plus, with
prefix u = ids[:, :P] and real continuation x* = ids[:, P:P+H], M continuations x_1..x_M sampled
from the base model given u, the contrastive loss ``-log softmax(-[E(u, x*), E(u, x_1), ...])[0]``.

Decoding (``HyproDecoder``), one block: M continuations from the base model given the history,
their energies, one index drawn from softmax(-E), its H events committed. For M -> infinity the
committed block is distributed as p_AR(x | u) exp(-E(u, x)) / Z(u); with E = 0 the index is
uniform over i.i.d. base-model draws, so the block is distributed exactly as plain AR sampling.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.data import DataSource
from genloom.core.generation import Commit, Decoder
from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL
from genloom.plugins.hypro import HyproConfig, HyproDecoderConfig, MarkovEventsConfig

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def transition_table(n_types: int, concentration: float, seed: int) -> torch.Tensor:
    """(K, K, K) second-order transition probabilities T[a, b, c] = P(next = c | previous two = a, b)."""
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.dirichlet(np.full(n_types, concentration), size=(n_types, n_types)), dtype=torch.float64)


class MarkovWindows(torch.utils.data.Dataset):
    def __init__(self, table: torch.Tensor, length: int, size: int, seed: int, split_index: int):
        self.table, self.length, self.size, self.seed, self.split_index = table, length, size, seed, split_index

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.split_index, int(i)])
        k = self.table.shape[0]
        seq = list(rng.integers(0, k, 2))
        table = self.table.numpy()
        while len(seq) < self.length:
            seq.append(int(rng.choice(k, p=table[seq[-2], seq[-1]])))
        return {"ids": torch.tensor(seq, dtype=torch.long)}


class MarkovEventsData(DataSource):
    SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}

    def __init__(self, config: MarkovEventsConfig):
        self.config = config
        self.table = transition_table(config.n_types, config.concentration, config.chain_seed)
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.info = {"modality": "event", "name": "markov-events", "seq_len": config.seq_len, "n_types": config.n_types}

    def load(self, split: str, tokenizer=None, ctx=None):
        if split not in self.SPLIT_INDEX:
            raise ValueError(f"unknown split '{split}' (known: train, val, test)")
        size = self.config.train_windows if split == "train" else self.config.eval_windows
        return MarkovWindows(self.table, self.config.seq_len + 1, size, self.config.seed, self.SPLIT_INDEX[split])


def build_data(config: MarkovEventsConfig, ctx=None) -> MarkovEventsData:
    return MarkovEventsData(config)


# ---------------------------------------------------------------------------------------------
# Proposals, energy, resampling
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_continuations(model, prefix: torch.Tensor, num: int, horizon: int, generator=None, forward=None) -> torch.Tensor:
    """(B, num, horizon) continuations of ``prefix`` (B, T) drawn by ancestral sampling from the base model."""
    forward = forward or (lambda ids: model(ids, pattern=CAUSAL))
    seq = prefix.repeat_interleave(num, dim=0)
    for _ in range(horizon):
        token = model.head.sample(forward(seq)[:, -1], generator)
        seq = torch.cat([seq, token.view(-1, 1).to(seq.dtype)], dim=1)
    return seq[:, -horizon:].view(prefix.shape[0], num, horizon)


def resample(energies: torch.Tensor, generator=None) -> torch.Tensor:
    """(B,) indices drawn from softmax(-E) over the last axis of ``energies`` (B, M)."""
    return torch.multinomial(torch.softmax(-energies.double(), dim=-1), 1, generator=generator)[:, 0]


class EnergyNet(nn.Module):
    """E(u, x): MLP([mean embedding of the prefix u, embeddings of the continuation x]) -> a scalar."""

    def __init__(self, vocab: int, width: int, horizon: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.horizon = horizon
        self.net = nn.Sequential(nn.Linear(width * (1 + horizon), width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, prefix: torch.Tensor, continuations: torch.Tensor) -> torch.Tensor:
        """``prefix`` (B, T), ``continuations`` (B, M, H) -> energies (B, M)."""
        B, M, H = continuations.shape
        if H != self.horizon:
            raise ValueError(f"the energy scores continuations of {self.horizon} events, got {H}")
        context = self.embedding(prefix).mean(1)  # (B, W)
        cont = self.embedding(continuations).reshape(B, M, -1)
        return self.net(torch.cat([context[:, None].expand(-1, M, -1), cont], -1))[..., 0]


class Hypro(Objective):
    def __init__(self, config: HyproConfig, base: Objective, vocab: int):
        super().__init__()
        self.config = config
        self.base = base
        self.pattern = base.pattern
        self.energy = EnergyNet(vocab, config.energy_width, config.horizon)

    def energy_loss(self, model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        prefix, real = ids[:, :cfg.prefix], ids[:, cfg.prefix:cfg.prefix + cfg.horizon]
        was_training = model.training
        model.eval()
        proposals = sample_continuations(model, prefix, cfg.num_proposals, cfg.horizon)
        model.train(was_training)
        candidates = torch.cat([real[:, None], proposals], dim=1)  # real first
        energies = self.energy(prefix, candidates)
        target = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        nce = F.cross_entropy(-energies, target)
        return {"nce": nce, "real_ranked_first": (energies.argmin(-1) == 0).float().mean()}

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        out = dict(self.base.loss(model, batch))
        energy = self.energy_loss(model, batch["ids"])
        out["base_loss"] = out["loss"].detach()
        out["loss"] = out["loss"] + self.config.nce_weight * energy["nce"]
        out["nce"] = energy["nce"].detach()
        out["real_ranked_first"] = energy["real_ranked_first"]
        for key in [k for k in out if k.startswith("_")]:
            out.pop(key)  # the base objective's sums describe its own loss only
        return out


class HyproDecoder(Decoder):
    """Blocks of ``horizon`` events: M base-model continuations, one resampled with softmax(-E)."""

    def start(self, session) -> None:
        if not bool(session.prompt_valid.all()):
            from genloom.core.errors import GenerationError

            raise GenerationError("the hypro decoder needs prompts of equal length (no padding)")
        if not isinstance(getattr(session.model, "objective", None), Hypro):
            from genloom.core.errors import GenerationError

            raise GenerationError("the hypro decoder needs a model trained with the hypro objective (its energy)")

    def energies(self, session, history, proposals):
        return session.model.objective.energy(history, proposals)

    def propose(self, session):
        history = session.history(pad=0)
        proposals = sample_continuations(session.model, history, self.config.num_proposals, self.config.horizon, session.generator,
                                         forward=lambda ids: session.forward(ids, pattern=CAUSAL))
        index = resample(self.energies(session, history, proposals), session.generator)
        return proposals[torch.arange(history.shape[0]), index]

    def verify(self, session, proposal) -> Commit:
        return Commit.all(proposal)

    def advance(self, session, commit) -> None:
        pass  # every block re-reads the whole history


def build_objective(config: HyproConfig, ctx) -> Hypro:
    base = ctx.build("objective", config.base, path="objective.base")
    return Hypro(config, base, ctx.vocab_size)


def build_decoder(config: HyproDecoderConfig, ctx=None) -> HyproDecoder:
    if config.horizon is None:
        config.bind(ctx)
    return HyproDecoder(config, ctx)
