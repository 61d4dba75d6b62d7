"""The patch-forecasting toolkit: patch tokens round-trip and keep variates apart, the decomposition
sums back exactly, and the next-patch rollout forecasts any horizon consistently."""

import pytest
import torch
from torch import nn

from genloom.toolkit.forecasting_patches import (NextPatchObjective, PatchTokenizer, decompose, fold_channels, moving_average,
                                                 unfold_channels)


def test_patch_tokens_round_trip_and_keep_each_variate_its_own_sequence():
    x = torch.randn(3, 12, 4, dtype=torch.float64)
    assert torch.equal(unfold_channels(fold_channels(x), 4), x)
    tok = PatchTokenizer(patch_len=4, horizon=12)
    tokens, stats = tok.encode(x)
    assert tokens.shape == (12, 3, 4)
    assert torch.allclose(tok.decode(tokens, stats), x, atol=1e-12)  # the patches, de-normalised, are the window
    assert torch.allclose(tokens[5].flatten(), (x[1, :, 1] - x[1, :, 1].mean()) / x[1, :, 1].std(unbiased=False), atol=1e-4)
    with pytest.raises(ValueError, match="patch_len"):
        tok.encode(torch.randn(1, 10, 1))


def test_decomposition_sums_back_exactly():
    x = torch.randn(2, 30, 3, dtype=torch.float64).cumsum(1)
    for period in (1, 7, 12):
        trend, seasonal, residual = decompose(x, period, 5)
        assert (trend + seasonal + residual - x).abs().max() < 1e-12
    assert torch.allclose(moving_average(torch.ones(1, 9, 1), 5), torch.ones(1, 9, 1))
    with pytest.raises(ValueError, match="odd"):
        moving_average(x, 4)


class _Causal(nn.Module):
    """A stand-in forecaster: next patch = a fixed linear map of the mean of the patches so far."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.map = nn.Linear(4, 4).double()

    def forward(self, tokens, pattern=None):
        means = tokens.cumsum(1) / torch.arange(1, tokens.shape[1] + 1, dtype=tokens.dtype)[None, :, None]
        return self.map(means)


def test_next_patch_rollout_any_horizon_and_chained_forecasts():
    torch.manual_seed(0)
    model = _Causal(PatchTokenizer(4, horizon=8))
    objective = NextPatchObjective()
    x = torch.randn(2, 16, 3, dtype=torch.float64).cumsum(1)
    with torch.no_grad():
        whole = objective.predict(model, x, horizon=8)
        first = objective.predict(model, x, horizon=4)
        second = objective.predict(model, torch.cat([x, first], 1)[:, 4:], horizon=4)
        assert (whole - torch.cat([first, second], 1)).abs().max() < 1e-12
        assert torch.allclose(objective.predict(model, x, horizon=3), whole[:, :3])
    out = objective.loss(model, {"x": x, "y": torch.randn(2, 8, 3, dtype=torch.float64)})
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
