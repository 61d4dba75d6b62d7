"""The PC-Sampler decoder: position weight x calibrated confidence decides what to unmask."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import torch

from genloom.toolkit.canvas import ConfidenceCanvasDecoder


def position_weight(positions: torch.Tensor, allowed: torch.Tensor, decay: float) -> torch.Tensor:
    """``exp(-decay * (i - i_min))`` (float64) with ``i_min`` the leftmost allowed position of each row.

    Relative to the paper's ``exp(-decay * (i - |prompt|))`` this scales a whole row by one constant,
    so the ranking is the same, and the leftmost candidate always has weight exactly 1.
    """
    pos = positions.to(torch.float64).expand(allowed.shape)
    big = torch.full_like(pos, float("inf"))
    first = torch.where(allowed, pos, big).min(-1, keepdim=True).values
    offset = (pos - first).clamp_min(0.0)
    if decay == 0.0:
        return torch.ones_like(offset)
    weight = torch.exp(-decay * offset)
    return torch.where(offset == 0, torch.ones_like(weight), weight)  # exp(-inf * 0) would be nan


def calibrated_confidence(confidence: torch.Tensor, tokens: torch.Tensor, log_prior: torch.Tensor, alpha: float) -> torch.Tensor:
    """``min(-p_hat * log p_D'(x_hat), alpha)``: confidence times the token's self-information, clipped."""
    information = -log_prior.to(confidence.device, torch.float64)[tokens]
    return torch.clamp(confidence * information, max=alpha)


def pc_score(confidence, tokens, positions, allowed, *, decay: float, log_prior=None, alpha: float = 10.0) -> torch.Tensor:
    """The PC-Sampler score of every position (only ``allowed`` ones are meaningful)."""
    calibrated = confidence if log_prior is None else calibrated_confidence(confidence, tokens, log_prior, alpha)
    return position_weight(positions, allowed, decay) * calibrated


def reference_texts(source: str, max_bytes: int):
    """Yield documents (bytes) of the reference corpus, in a deterministic order, up to ``max_bytes``."""
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.glob("*.py"))
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"pc-sampler reference_corpus '{source}' does not exist")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    used = 0
    for path in files:
        if used >= max_bytes:
            break
        try:
            data = path.read_bytes()[: max_bytes - used]
        except OSError:
            continue
        used += len(data)
        yield data


_PRIOR_CACHE: dict = {}


def token_log_prior(tokenizer, vocab_size: int, source: str, max_bytes: int, smoothing: float) -> torch.Tensor:
    """log p_D'(token): smoothed token frequencies of the reference corpus under ``tokenizer`` (float64).

    Counted once per (tokenizer object, corpus, settings) in a process.
    """
    key = (id(tokenizer), vocab_size, source, max_bytes, smoothing)
    if key in _PRIOR_CACHE:
        return _PRIOR_CACHE[key]
    counts = torch.full((vocab_size,), float(smoothing), dtype=torch.float64)
    eos = getattr(tokenizer, "eos_id", None)
    for doc in reference_texts(source, max_bytes):
        ids = torch.from_numpy(np.asarray(tokenizer.encode(doc), dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < vocab_size)]
        counts += torch.bincount(ids, minlength=vocab_size).to(torch.float64)
        if eos is not None and 0 <= eos < vocab_size:
            counts[eos] += 1.0  # one end of document per file
    _PRIOR_CACHE[key] = torch.log(counts / counts.sum())
    return _PRIOR_CACHE[key]


class PCSampler(ConfidenceCanvasDecoder):
    """Reveals the masked positions with the highest ``exp(-lambda i) * calibrated confidence``."""

    def __init__(self, config, ctx, mask_id: int):
        super().__init__(config, ctx, mask_id)
        self.log_prior: torch.Tensor | None = None

    def set_prior(self, probabilities: torch.Tensor) -> None:
        """Use these token probabilities (V,) as p_D' instead of counting the reference corpus."""
        p = torch.as_tensor(probabilities, dtype=torch.float64)
        self.log_prior = torch.log(p / p.sum())

    def prior(self, session, vocab_size: int) -> torch.Tensor:
        """log p_D' over the model's output vocabulary, counted once on the reference corpus."""
        if self.log_prior is None or self.log_prior.numel() != vocab_size:
            tokenizer = session.tokenizer or getattr(session.model, "tokenizer", None)
            if tokenizer is None:
                raise ValueError("pc-sampler calibration needs the model's tokenizer to count the reference corpus (or call set_prior)")
            c = self.config
            self.log_prior = token_log_prior(tokenizer, vocab_size, c.reference_corpus, c.reference_max_bytes, c.prior_smoothing)
        return self.log_prior

    def score(self, session, tokens, confidence, probs):
        s = session.scratch
        allowed = (s["canvas"] == self.mask_id) & self.region(session)
        positions = torch.arange(s["canvas"].shape[1], device=confidence.device).reshape(1, -1)
        c = self.config
        return pc_score(confidence, tokens, positions, allowed, decay=c.position_decay,
                        log_prior=self.prior(session, probs.shape[-1]) if c.calibration else None, alpha=c.clip_alpha)


def build(config, ctx) -> PCSampler:
    return PCSampler(config, ctx, ctx.mask_id)
