"""Autoformer: FFT Auto-Correlation equals the direct circular correlation, time-delay aggregation
rolls the values by the chosen lags, and the decomposition reconstructs its input exactly."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.autoformer.model import (
    autocorrelation,
    CircularConv,
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


def test_time_delay_aggregation_in_training_shares_the_batch_mean_lags():
    torch.manual_seed(0)
    values = torch.randn(3, 10, 1, 2, dtype=torch.float64)
    corr = torch.full((3, 10, 1, 2), -50.0, dtype=torch.float64)
    corr[0, 3], corr[1, 3], corr[2, 7] = 5.0, 5.0, 6.0  # the batch mean ranks lag 3 first; sample 2 alone prefers 7
    shared = time_delay_aggregation(values, corr, top_k=1, shared_lags=True)
    for b in range(3):
        assert torch.allclose(shared[b], torch.roll(values[b], -3, dims=0))
    # per sample (inference), sample 2 keeps its own lag: the broken variant for training
    own = time_delay_aggregation(values, corr, top_k=1)
    assert torch.allclose(own[2], torch.roll(values[2], -7, dims=0))
    assert not torch.allclose(own[2], shared[2])
    # two shared lags: each sample weights them by the softmax of its own correlations there
    corr[2, 5] = 4.0
    shared = time_delay_aggregation(values, corr, top_k=2, shared_lags=True)
    mean = corr.mean(dim=(2, 3)).mean(0)
    lags = torch.topk(mean, 2).indices.tolist()
    w = torch.softmax(corr[2, lags, 0, 0], 0)
    assert torch.allclose(shared[2], w[0] * torch.roll(values[2], -lags[0], 0) + w[1] * torch.roll(values[2], -lags[1], 0))


@pytest.mark.parametrize("shared", [False, True])
def test_the_autocorrelation_layer_shares_lags_only_while_training_and_when_asked(shared):
    from genloom.plugins.autoformer.model import AutoCorrelation

    torch.manual_seed(0)
    layer = AutoCorrelation(8, 2, shared_training_lags=shared).double()
    x = torch.randn(4, 20, 8, dtype=torch.float64)
    calls = []
    import genloom.plugins.autoformer.model as model_module
    original = model_module.time_delay_aggregation
    model_module.time_delay_aggregation = lambda *a, **k: calls.append(k["shared_lags"]) or original(*a, **k)
    try:
        layer.train()(x, x, x)
        layer.eval()(x, x, x)
    finally:
        model_module.time_delay_aggregation = original
    assert calls == [shared, False]


def test_circular_convolution_is_the_kernel_3_formula_and_commutes_with_a_circular_shift():
    torch.manual_seed(0)
    conv = CircularConv(3, 4).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    w = conv.conv.weight  # (out, in, 3): taps on x[t-1], x[t], x[t+1]
    expected = (torch.roll(x, 1, 1) @ w[:, :, 0].T + x @ w[:, :, 1].T + torch.roll(x, -1, 1) @ w[:, :, 2].T)
    assert (conv(x) - expected).abs().max() < 1e-12
    assert (conv(torch.roll(x, 2, 1)) - torch.roll(conv(x), 2, 1)).abs().max() < 1e-12
    # the broken variant: zero padding differs at the ends and is not shift-equivariant
    zero = torch.nn.functional.conv1d(x.transpose(1, 2), w, padding=1).transpose(1, 2)
    assert (zero[:, 1:-1] - expected[:, 1:-1]).abs().max() < 1e-12
    assert (zero - expected).abs().max() > 1e-3


def test_the_backbone_embeds_by_circular_convolution_and_projects_each_layers_trend_by_one():
    torch.manual_seed(0)
    model = _model()
    backbone = model.backbone
    assert isinstance(backbone.encoder_embedding, CircularConv) and isinstance(backbone.decoder_embedding, CircularConv)
    assert all(isinstance(layer.trend_projection, CircularConv) for layer in backbone.decoder)
    h = torch.randn(2, 24, 16)
    with torch.no_grad():
        out = backbone(h)
        seasonal, trend = backbone.decoder_inputs(h)
        memory = backbone.encoder_embedding(h)
        for layer in backbone.encoder:
            memory = layer(memory)
        memory = backbone.encoder_norm(memory)
        x = backbone.decoder_embedding(seasonal)
        for layer in backbone.decoder:
            x, residual = layer(x, memory)
            trend = trend + residual
        assert torch.allclose(out, backbone.decoder_norm(x) + trend, atol=1e-6)
        # the broken variant: without the convolutional embedding the output changes
        x = seasonal
        for layer in backbone.decoder:
            x, _ = layer(x, memory)
        assert not torch.allclose(out, backbone.decoder_norm(x) + trend, atol=1e-3)


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
