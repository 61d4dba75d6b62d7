"""CALM's training objective: next-vector prediction with the energy loss.

A batch's ids (B, T) are cut into n = T // K whole chunks (a trailing partial chunk is dropped).
The backbone reads chunks 0..n-2 through the head's input compression under the causal pattern
(one position per chunk); position i's hidden state is scored by the energy loss against the
frozen autoencoder's posterior of chunk i+1. A chunk is scored only when all its K tokens are
real (the windows' ``mask`` marks padding of an evaluation split's last window).

In evaluation (the model not in training mode, with ``eval_brier``) every scored position also
draws two vectors, decodes each into K tokens and adds the two-sample Brier-1..K estimates
(``_brier_<m>`` sums and ``_brier_count``): ``genloom evaluate`` turns them into Brier-n and
BrierLM (:meth:`CalmObjective.evaluate_run`).
"""

from __future__ import annotations


import torch

from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL
from genloom.toolkit.brier import brier_lm, brier_ngram_estimates

def chunk_validity(batch: dict, n_chunks: int, K: int) -> torch.Tensor:
    """(B, n) True where every token of the chunk is real (token t is real when t = 0 or mask[t-1])."""
    ids = batch["ids"]
    mask = batch.get("mask")
    if mask is None:
        return torch.ones(ids.shape[0], n_chunks, dtype=torch.bool, device=ids.device)
    real = torch.cat([torch.ones_like(mask[:, :1]), mask.bool()], 1)[:, : n_chunks * K]
    return real.reshape(ids.shape[0], n_chunks, K).all(-1)


class CalmObjective(Objective):
    pattern = CAUSAL

    def __init__(self, config, ctx=None):
        super().__init__()
        self.config = config

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        tokenizer, head = model.tokenizer, model.head
        K = tokenizer.chunk_size
        ids = batch["ids"]
        n = ids.shape[1] // K
        if n < 2:
            raise ConfigError(f"a training window of {ids.shape[1]} ids holds {n} chunk(s) of chunk_size={K}; CALM needs at least 2 "
                              f"(raise data.seq_len)", path="data.seq_len")
        ids = ids[:, : n * K]
        chunks = tokenizer.chunks(ids)
        with torch.no_grad():
            mean, logvar = tokenizer.posterior(chunks[:, 1:])
        h = model.hidden(ids[:, : (n - 1) * K], pattern=self.pattern)
        valid = chunk_validity(batch, n, K)[:, 1:]
        out = head.energy_loss(h, mean.to(h.dtype), logvar.to(h.dtype), valid)
        out["_chunks"] = valid.sum().double()
        if self.config.eval_brier and not model.training:
            with torch.no_grad():
                out.update(self.brier_sums(model, h, chunks[:, 1:], valid))
        return out

    @torch.no_grad()
    def brier_sums(self, model, h: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        """Two samples per scored position, decoded to K tokens each; sums of the Brier-1..K estimates."""
        head, tokenizer = model.head, model.tokenizer
        x1 = tokenizer.decode_vectors(head.sample(h, generator))
        x2 = tokenizer.decode_vectors(head.sample(h, generator))
        estimates = brier_ngram_estimates(x1, x2, truth)[valid]  # (scored, K)
        out = {f"_brier_{m + 1}": estimates[:, m].sum() for m in range(truth.shape[-1])}
        out["_brier_count"] = torch.tensor(float(estimates.shape[0]), dtype=torch.float64)
        return out

    def summarise(self, metrics: dict[str, float]) -> dict[str, float]:
        """``genloom evaluate RUN``: mean Brier-1..K and BrierLM from the split's sums (:func:`summarise`)."""
        return summarise(metrics)


def summarise(metrics: dict[str, float]) -> dict[str, float]:
    """Turn the split's ``total_brier_<m>``/``total_brier_count`` sums into mean Brier-m and BrierLM
    (of Brier-1..min(4, K), the paper's n <= 4)."""
    out = dict(metrics)
    count = out.get("total_brier_count")
    if count:
        ms = sorted(int(k[len("total_brier_"):]) for k in out if k.startswith("total_brier_") and k[len("total_brier_"):].isdigit())
        for m in ms:
            out[f"brier_{m}"] = out[f"total_brier_{m}"] / count
        out["brier_lm"] = brier_lm([out[f"brier_{m}"] for m in ms if m <= 4])
    return out


def build_objective(config, ctx) -> CalmObjective:
    tokenizer = ctx.get("tokenizer")
    if tokenizer is None or not hasattr(tokenizer, "posterior"):
        raise ConfigError("the calm objective needs the calm-chunks tokenizer (the chunk autoencoder gives the target vectors)", path="tokenizer")
    return CalmObjective(config, ctx)
