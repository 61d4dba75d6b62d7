"""The ARDT backbone and its one-hot head.

Backbone: hidden states are one-hot token ids (B, L, V); for each position the tree reads the ids
of the last ``window`` tokens (earlier than the start: -1) and outputs the next-token
distribution (B, L, V), which the ``ardt-onehot`` head turns into logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genloom.core.model import Backbone, Head
from genloom.core.pattern import CAUSAL, AttentionPattern
from genloom.plugins.ardt import automata
from genloom.toolkit.recurrent import RecurrentState

PAD = -1


def windows_of(history: torch.Tensor, valid: torch.Tensor, start: int, window: int) -> np.ndarray:
    """For every position p >= ``start`` of ``history`` (B, T) the ids of the last ``window`` valid
    tokens up to p (oldest first, -1 before the start); rows (B, T - start, window)."""
    B, T = history.shape
    out = np.full((B, T - start, window), PAD, dtype=np.int64)
    ids, ok = history.cpu().numpy(), valid.cpu().numpy()
    for b in range(B):
        seen: list[int] = []
        for p in range(T):
            if ok[b, p]:
                seen.append(int(ids[b, p]))
            if p >= start:
                tail = seen[-window:]
                out[b, p - start, window - len(tail):] = tail
    return out


class ARDT(Backbone):
    """A scikit-learn decision tree over a window of previous token ids; causal pattern only."""

    patterns = frozenset({"causal"})

    def __init__(self, cfg):
        super().__init__()
        from sklearn.tree import DecisionTreeClassifier

        self.cfg = cfg
        self.window = cfg.resolved_window
        self.vocab_size = automata.vocabulary_size(cfg.automaton)
        self.train_inputs = automata.random_inputs(cfg.automaton, cfg.input_length, cfg.train_strings, cfg.seed)
        features, targets = self.training_samples(self.train_inputs)
        self.tree = DecisionTreeClassifier(max_depth=cfg.max_depth, random_state=cfg.seed).fit(features, targets)
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def training_samples(self, inputs):
        """Windows ending at every chain-of-thought position (the separator and the states but the
        last) and the token that follows."""
        n = self.cfg.input_length
        features, targets = [], []
        for x in inputs:
            seq = torch.tensor([automata.trace(self.cfg.automaton, x)])
            rows = windows_of(seq, torch.ones_like(seq, dtype=torch.bool), n, self.window)[0]
            features.append(rows[:-1])
            targets.append(seq[0, n + 1 :].numpy())
        return np.concatenate(features), np.concatenate(targets)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, V) next-token distributions for windows (N, window)."""
        out = np.zeros((features.shape[0], self.vocab_size))
        if features.shape[0]:
            out[:, self.tree.classes_] = self.tree.predict_proba(features)
        return out

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = CAUSAL, state: RecurrentState | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        if not self.supports(pattern):
            raise ValueError(f"the ardt backbone serves only the causal pattern (it predicts from previous tokens), got '{pattern.kind}'")
        B, L, V = h.shape
        ids = h.argmax(-1)
        steps = torch.ones(B, L, dtype=torch.bool, device=h.device) if valid is None else valid.to(h.device, torch.bool)
        if state is not None:
            before = state.layers[0]["window"]
            steps = state.begin(valid, L)
            history = torch.cat([before, ids], 1)
            history_valid = torch.cat([before >= 0, steps], 1)
            rows = windows_of(history, history_valid, self.window, self.window)
            state.commit(0, {"window": torch.as_tensor(rows[:, -1], device=h.device) if L else before}, {"ids": ids})
        else:
            rows = windows_of(ids, steps, 0, self.window)
        probs = self.probabilities(rows.reshape(-1, self.window)).reshape(B, L, V)
        return torch.as_tensor(probs, dtype=h.dtype, device=h.device)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None) -> RecurrentState:
        """The last ``window`` token ids per row (-1: none yet); ``capacity`` is ignored."""
        device = device if device is not None else self._device_probe.device
        return RecurrentState([{"window": torch.full((batch_size, self.window), PAD, dtype=torch.long, device=device)}], self._replay, batch_size, device=device)

    def _replay(self, index, before, record, keep):
        history = torch.cat([before["window"], record["ids"]], 1)
        rows = windows_of(history, torch.cat([before["window"] >= 0, keep], 1), self.window, self.window)
        return {"window": torch.as_tensor(rows[:, -1], device=keep.device)}


class OneHotHead(Head):
    """Embeds ids as one-hot vectors; logits are log(max(p, floor)) of a probability-valued backbone."""

    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(ids.clamp_min(0), self.vocab_size).to(torch.get_default_dtype())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log(h.clamp_min(self.cfg.floor))


def build(config, ctx) -> ARDT:
    return ARDT(config)


def build_head(config, ctx) -> OneHotHead:
    return OneHotHead(config, ctx.vocab_size)
