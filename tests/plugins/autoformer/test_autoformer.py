"""Autoformer: FFT Auto-Correlation equals the direct circular correlation, time-delay aggregation
rolls the values by the chosen lags, and the decomposition reconstructs its input exactly."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.autoformer.model import (
    autocorrelation,
    direct_autocorrelation,
    moving_average,
    SeriesDecomposition,
    time_delay_aggregation,
)
from genloom.testing import tiny_model


def test_fft_autocorrelation_equals_the_direct_circular_correlation():
    torch.manual_seed(0)
    q, k = torch.randn(2, 24, 3, 4, dtype=torch.float64), torch.randn(2, 24, 3, 4, dtype=torch.float64)
    assert (autocorrelation(q, k) - direct_autocorrelation(q, k)).abs().max() < 1e-10
    # odd lengths too (rfft/irfft with n given)
    q, k = torch.randn(1, 17, 1, 2, dtype=torch.float64), torch.randn(1, 17, 1, 2, dtype=torch.float64)
    assert (autocorrelation(q, k) - direct_autocorrelation(q, k)).abs().max() < 1e-10


def test_without_the_conjugate_the_fft_product_is_a_convolution_and_the_check_fails():
    torch.manual_seed(0)
    q, k = torch.randn(2, 24, 1, 2, dtype=torch.float64), torch.randn(2, 24, 1, 2, dtype=torch.float64)
    convolution = torch.fft.irfft(torch.fft.rfft(q, dim=1) * torch.fft.rfft(k, dim=1), n=24, dim=1)
    assert (convolution - direct_autocorrelation(q, k)).abs().max() > 1e-2


def test_autocorrelation_finds_the_period():
    t = torch.arange(48, dtype=torch.float64)
    x = torch.sin(2 * torch.pi * t / 12)[None, :, None, None]
    corr = autocorrelation(x, x).mean(dim=(2, 3))[0]
    lags = torch.topk(corr[1:], 3).indices + 1
    assert set(lags.tolist()) <= {12, 24, 36}  # a multiple of the period


def test_time_delay_aggregation_rolls_the_values_by_the_top_lags():
    torch.manual_seed(0)
    values = torch.randn(2, 10, 2, 3, dtype=torch.float64)
    corr = torch.full((2, 10, 2, 3), -50.0, dtype=torch.float64)
    corr[0, 3], corr[1, 7] = 5.0, 5.0  # one dominant lag per sample
    out = time_delay_aggregation(values, corr, top_k=1)
    assert torch.allclose(out[0], torch.roll(values[0], -3, dims=0))  # out[t] = V[t + 3]
    assert torch.allclose(out[1], torch.roll(values[1], -7, dims=0))
    assert not torch.allclose(out[0], torch.roll(values[0], 3, dims=0))  # the opposite delay is not it
    # two lags: softmax of their correlations weights the two rolled copies
    corr[0, 5] = 4.0
    out = time_delay_aggregation(values, corr, top_k=2)
    w = torch.softmax(torch.tensor([5.0, 4.0], dtype=torch.float64), 0)
    assert torch.allclose(out[0], w[0] * torch.roll(values[0], -3, 0) + w[1] * torch.roll(values[0], -5, 0))


def test_decomposition_reconstructs_the_input_and_its_trend_is_a_padded_moving_average():
    torch.manual_seed(0)
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    seasonal, trend = SeriesDecomposition(5)(x)
    assert torch.equal(seasonal + trend, x) or (seasonal + trend - x).abs().max() < 1e-12
    assert torch.allclose(trend[:, 2:-2], torch.stack([x[:, i - 2:i + 3].mean(1) for i in range(2, 18)], 1))
    constant = torch.full((1, 9, 1), 3.0, dtype=torch.float64)
    assert torch.allclose(moving_average(constant, 5), constant)  # the ends are repeated, not zero-padded
    zero_padded = torch.nn.functional.avg_pool1d(constant.transpose(1, 2), 5, stride=1, padding=2).transpose(1, 2)
    assert not torch.allclose(zero_padded, constant)  # the broken variant: zero padding drags the ends down


def _model(lookback=24, horizon=6, variates=3, label_len=12):
    return tiny_model(base={
        "tokenizer": {"name": "time-step", "horizon": horizon},
        "head": {"name": "forecast", "lookback": variates, "horizon": variates},
        "backbone": {"name": "autoformer", "d_model": 16, "n_heads": 2, "label_len": label_len, "horizon": horizon, "moving_average": 5},
        "objective": {"name": "mse"},
    }).model.eval()


def test_the_decoder_returns_label_len_plus_horizon_steps_and_the_forecast_the_horizon():
    torch.manual_seed(0)
    model = _model()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append((args[0].shape, out.shape)))
    forecast = model.objective.predict(model, torch.randn(4, 24, 3))
    assert seen == [(torch.Size([4, 24, 16]), torch.Size([4, 18, 16]))]
    assert forecast.shape == (4, 6, 3)


def test_invalid_config_names_the_field():
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="moving_average"):
        tiny_model(base={"tokenizer": {"name": "time-step", "horizon": 2}, "head": {"name": "forecast", "lookback": 1, "horizon": 1},
                         "backbone": {"name": "autoformer", "moving_average": 4, "label_len": 2, "horizon": 2}, "objective": {"name": "mse"}})


def test_runnable_config_assembles_and_trains_a_batch():
    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "autoformer.yaml")
    assert built.data.info["name"] == "co2"
