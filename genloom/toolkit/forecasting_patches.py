"""Patch-based forecasting pieces: patch tokens, next-patch generation, series decomposition, a frozen LM.

Shared by the patch forecasters (GPHT, AutoTimes, TEMPO, EntroPE):

- :class:`PatchTokenizer` (``patch``): each variate of a window ``(B, L, V)`` is its own sequence
  (channel independence), normalised by its own lookback mean/std and cut into ``L / P``
  non-overlapping patches: tokens ``(B * V, L / P, P)``. ``decode`` flattens the output patches of
  each sequence, keeps the first ``horizon`` values and undoes the normalisation;
- :class:`PatchValueHead` (``patch-values``): the identity head of backbones that embed and project
  patch values themselves (a point forecast, MSE loss);
- :class:`NextPatchObjective` (``next-patch``): generative forecasting. Training is teacher-forced:
  the lookback and the target are cut into patches (both normalised by the lookback's statistics)
  and every patch is predicted from the ones before it (causal pattern). Forecasting is an
  autoregressive rollout: the model sees the last ``lookback`` steps, normalised by their own
  statistics, predicts the next patch, which is appended in the data's scale; so one model
  forecasts any horizon, and a ``2P`` forecast equals two chained ``P``-step forecasts exactly;
- :func:`decompose`: an additive STL-style decomposition of each window into a centred
  moving-average trend, a periodic seasonal profile and the residual (exact sum by construction);
- :class:`FrozenLM` / :func:`load_frozen_lm`: the backbone of a genloom-trained language model
  run, frozen (no gradient, eval mode), run over continuous embeddings, plus text embeddings from
  its own tokenizer and embedding table (AutoTimes' timestamp text, stand-in for a pretrained LLM).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Head, Objective
from genloom.core.pattern import CAUSAL
from genloom.toolkit.forecasting import ForecastOutputs
from genloom.toolkit.forecasting_config import NextPatchObjectiveConfig, PatchTokenizerConfig, PatchValueHeadConfig


# ---------------------------------------------------------------------------------------------
# Patch tokens
# ---------------------------------------------------------------------------------------------

def window_stats(x: torch.Tensor, eps: float = 1e-5):
    """Per-window, per-variate mean and std over the time axis of ``x`` (B, L, V): two (B, 1, V) tensors."""
    mean = x.mean(dim=1, keepdim=True)
    std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + eps)
    return mean, std


def fold_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, L, V) -> (B * V, L): each variate becomes its own sequence."""
    return x.transpose(1, 2).reshape(-1, x.shape[1])


def unfold_channels(seq: torch.Tensor, num_variates: int) -> torch.Tensor:
    """(B * V, T) -> (B, T, V), the inverse of :func:`fold_channels`."""
    return seq.reshape(-1, num_variates, seq.shape[-1]).transpose(1, 2)


class PatchTokenizer:
    """``encode(x (B, L, V)) -> (tokens (B*V, L/P, P), stats)``; ``decode(patches (B*V, n, k), stats) -> (B, horizon, V)``."""

    series = True  # the series-tokenizer contract of the forecasting objectives
    vocab_size = 0
    eos_id = None

    def __init__(self, patch_len: int, horizon: int, instance_norm: bool = True, eps: float = 1e-5):
        self.patch_len, self.horizon, self.instance_norm, self.eps = patch_len, horizon, instance_norm, eps

    def normalise(self, x: torch.Tensor):
        """``(x normalised, stats)`` with stats ``(mean, std, V)`` (mean/std None without instance_norm)."""
        if x.dim() != 3:
            raise ValueError(f"patch tokenizer expects windows (B, lookback, V), got shape {tuple(x.shape)}")
        if not self.instance_norm:
            return x, (None, None, x.shape[2])
        mean, std = window_stats(x, self.eps)
        return (x - mean) / std, (mean, std, x.shape[2])

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, V) with T a multiple of P -> (B * V, T / P, P), no normalisation."""
        if x.shape[1] % self.patch_len:
            raise ValueError(f"patch tokenizer: the window length {x.shape[1]} is not a multiple of patch_len {self.patch_len}")
        return fold_channels(x).reshape(-1, x.shape[1] // self.patch_len, self.patch_len)

    def encode(self, x: torch.Tensor):
        normalised, stats = self.normalise(x)
        return self.patches(normalised), stats

    def decode(self, outputs: torch.Tensor, stats, length: int | None = None) -> torch.Tensor:
        """Output patches (B*V, n, k) -> the first ``length`` (default: horizon) values per variate, (B, length, V), de-normalised."""
        length = self.horizon if length is None else length
        flat = outputs.reshape(outputs.shape[0], -1)
        if flat.shape[1] < length:
            raise ValueError(f"patch tokenizer needs {length} forecast values per variate, got {flat.shape[1]}")
        mean, std, num_variates = stats if stats is not None else (None, None, 1)
        forecast = unfold_channels(flat[:, :length], num_variates)
        if mean is not None:
            forecast = forecast * std + mean
        return forecast


def build_patch_tokenizer(config: PatchTokenizerConfig, ctx=None) -> PatchTokenizer:
    if ctx is not None:
        config.bind(ctx)
    return PatchTokenizer(config.patch_len, config.horizon, config.instance_norm, config.eps)


class PatchValueHead(Head):
    """Identity head: the backbone embeds patch values and projects back to them itself; point forecast, MSE."""

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if ids.is_floating_point() else ids.float()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def loss(self, outputs, targets, mask=None, weight=None) -> torch.Tensor:
        return F.mse_loss(outputs.float(), targets.float())

    def sample(self, logits, generator=None):
        return logits


def build_patch_value_head(config: PatchValueHeadConfig, ctx=None) -> PatchValueHead:
    return PatchValueHead()


# ---------------------------------------------------------------------------------------------
# Next-patch generation
# ---------------------------------------------------------------------------------------------

class NextPatchObjective(ForecastOutputs, Objective):
    """Teacher-forced next-patch MSE; forecasts by autoregressive rollout (any horizon)."""

    def __init__(self, target_only: bool = False):
        super().__init__()
        self.target_only = target_only

    @staticmethod
    def _tokenizer(model) -> PatchTokenizer:
        tokenizer = model.tokenizer
        if not isinstance(tokenizer, PatchTokenizer):
            raise ValueError("the next-patch objective needs the 'patch' tokenizer")
        return tokenizer

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        tokenizer = self._tokenizer(model)
        x, y = batch["x"], batch["y"].to(batch["x"].dtype)
        P = tokenizer.patch_len
        normalised, (mean, std, _) = tokenizer.normalise(x)
        target = y if mean is None else (y - mean) / std
        whole = target.shape[1] // P * P  # a partial last patch of the target is not scored
        tokens = tokenizer.patches(torch.cat([normalised, target[:, :whole]], dim=1))
        outputs = model(tokens, pattern=CAUSAL)
        first = x.shape[1] // P - 1 if self.target_only else 0
        prediction, truth = outputs[:, first:-1], tokens[:, first + 1:]
        if prediction.shape[1] == 0:
            raise ValueError("next-patch: no patch to score (the horizon is shorter than patch_len and target_only is set)")
        mse = F.mse_loss(prediction.float(), truth.float())
        with torch.no_grad():  # MAE of the target patches' predictions (of every scored patch if the target has none)
            lookback_patches = x.shape[1] // P
            error = outputs[:, lookback_patches - 1:-1] - tokens[:, lookback_patches:] if whole else prediction - truth
            mae = error.float().abs().mean()
        return {"loss": mse, "mse": mse.detach(), "mae": mae}

    def next_patch(self, model, window: torch.Tensor) -> torch.Tensor:
        """The next patch (B, P, V) in the data's scale after ``window`` (B, L, V), normalised by its own statistics."""
        tokenizer = self._tokenizer(model)
        tokens, stats = tokenizer.encode(window)
        outputs = model(tokens, pattern=CAUSAL)[:, -1:]
        return tokenizer.decode(outputs, stats, length=tokenizer.patch_len)

    def predict(self, model, x: torch.Tensor, horizon: int | None = None) -> torch.Tensor:
        """Forecast (B, horizon, V): roll out ``ceil(horizon / P)`` next patches over a sliding lookback window."""
        tokenizer = self._tokenizer(model)
        horizon = tokenizer.horizon if horizon is None else horizon
        window, generated = x, []
        for _ in range(math.ceil(horizon / tokenizer.patch_len)):
            patch = self.next_patch(model, window)
            generated.append(patch)
            window = torch.cat([window, patch], dim=1)[:, patch.shape[1]:]
        return torch.cat(generated, dim=1)[:, :horizon]


def build_next_patch_objective(config: NextPatchObjectiveConfig, ctx=None) -> NextPatchObjective:
    return NextPatchObjective(config.target_only)


# ---------------------------------------------------------------------------------------------
# Decomposition
# ---------------------------------------------------------------------------------------------

def moving_average(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Centred moving average along dim 1 of (B, L, V), the ends repeated (odd ``kernel``)."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the moving-average kernel must be odd and positive, got {kernel}")
    half = kernel // 2
    padded = torch.cat([x[:, :1].expand(-1, half, -1), x, x[:, -1:].expand(-1, half, -1)], dim=1)
    return padded.unfold(1, kernel, 1).mean(dim=-1)


def decompose(x: torch.Tensor, period: int, trend_kernel: int):
    """Additive decomposition of windows (B, L, V): ``(trend, seasonal, residual)``, summing to ``x``.

    trend = centred moving average; seasonal = the mean of the detrended window at each phase of
    ``period`` (phases counted back from the window's last step), centred to mean zero over a
    period; residual = x - trend - seasonal. ``period`` 1 gives no seasonal part.
    """
    trend = moving_average(x, trend_kernel)
    detrended = x - trend
    length = x.shape[1]
    if period <= 1:
        seasonal = torch.zeros_like(x)
    else:
        phase = (torch.arange(length, device=x.device) - length) % period  # the last step has phase period - 1
        onehot = F.one_hot(phase, period).to(x.dtype)  # (L, period)
        profile = torch.einsum("blv,lp->bpv", detrended, onehot) / onehot.sum(0).clamp_min(1)[None, :, None]
        profile = profile - profile.mean(dim=1, keepdim=True)
        seasonal = profile[:, phase]
    residual = x - trend - seasonal
    return trend, seasonal, residual


# ---------------------------------------------------------------------------------------------
# A frozen language model
# ---------------------------------------------------------------------------------------------

class FrozenLM(nn.Module):
    """The backbone of a trained genloom language model, frozen, over continuous embeddings (B, N, d_lm).

    Its parameters have ``requires_grad`` False and it stays in eval mode; gradients still flow
    through it to what feeds it (the trainable embeddings before it). ``embed_text`` gives the
    LM's representation of strings (its last position's hidden state), computed without gradient.
    """

    def __init__(self, model):
        super().__init__()
        self.backbone = model.backbone
        self.text_head = model.head
        self.text_tokenizer = model.tokenizer
        self.d_model = int(model.ctx.d_model)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout and the like stay off

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.backbone(h, pattern=CAUSAL)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), d_lm): the LM's last hidden state after each text."""
        rows = []
        for text in texts:
            ids = torch.tensor([self.text_tokenizer.encode(text)], device=next(self.parameters()).device)
            rows.append(self.backbone(self.text_head.embed(ids), pattern=CAUSAL)[0, -1])
        return torch.stack(rows)


def load_frozen_lm(run) -> FrozenLM:
    """The frozen language model of the genloom run directory ``run`` (its config, weights and tokenizer)."""
    from pathlib import Path

    from genloom.core.errors import ConfigError
    from genloom.core.generation import load_model

    if not Path(run).is_dir():
        raise ConfigError(f"the frozen language model's run directory '{run}' does not exist "
                          "(train one first, e.g. `genloom train configs/quickstart.yaml`)", path="backbone.lm_run")
    return FrozenLM(load_model(str(run)))
