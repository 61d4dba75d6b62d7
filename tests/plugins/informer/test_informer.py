"""Informer: ProbSparse attention gives full attention to the top-u queries by M = max - mean and
mean(V) to the rest (full attention exactly when u = L); each distilling layer halves the length."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.informer.model import (
    DistillingLayer,
    active_count,
    full_attention,
    prob_sparse_attention,
    sparsity_measurement,
)
from genloom.testing import tiny_model


def _qkv(length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, length, 8, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
def test_with_every_query_active_probsparse_is_full_attention(causal):
    q, k, v = _qkv()
    out, _ = prob_sparse_attention(q, k, v, causal=causal, active=20)
    assert (out - full_attention(q, k, v, causal=causal)).abs().max() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_top_u_queries_by_m_get_full_attention_and_the_others_the_mean_of_v(causal):
    q, k, v = _qkv()
    u = active_count(20, 1.0)
    assert u == 3  # ceil(ln 20)
    out, top = prob_sparse_attention(q, k, v, factor=1.0, causal=causal)
    scores = q @ k.transpose(-1, -2) / 8 ** 0.5
    m = scores.max(-1).values - scores.mean(-1)
    assert torch.equal(top.sort(-1).values, m.topk(u, -1).indices.sort(-1).values)
    assert torch.allclose(sparsity_measurement(q, k), m)
    full = full_attention(q, k, v, causal=causal)
    lazy = v.cumsum(-2) / torch.arange(1, 21, dtype=torch.float64)[:, None] if causal else v.mean(-2, keepdim=True).expand_as(v)
    active = torch.zeros(2, 3, 20, dtype=torch.bool).scatter_(-1, top, True)
    assert (out - full)[active].abs().max() < 1e-12
    assert (out - lazy)[~active].abs().max() < 1e-12


def test_ranking_by_m_loses_less_than_the_reverse_ranking():
    # the broken variant: activating the queries with the *smallest* M approximates full attention worse
    q, k, v = _qkv(length=40, seed=1)
    q = q * 3  # sharper attention, so lazy and active queries differ clearly
    full = full_attention(q, k, v)
    by_m, _ = prob_sparse_attention(q, k, v, factor=2.0)
    u = active_count(40, 2.0)
    worst = (-sparsity_measurement(q, k)).topk(u, -1).indices
    reverse = v.mean(-2, keepdim=True).expand_as(v).clone()
    reverse.scatter_(-2, worst[..., None].expand(-1, -1, -1, 8), torch.gather(full, -2, worst[..., None].expand(-1, -1, -1, 8)))
    assert (by_m - full).pow(2).mean() < 0.8 * (reverse - full).pow(2).mean()


def test_each_distilling_layer_halves_the_sequence():
    layer = DistillingLayer(8).eval()
    x = torch.randn(2, 24, 8)
    assert layer(x).shape == (2, 12, 8) and layer(layer(x)).shape == (2, 6, 8)
    model = _model(encoder_layers=3)
    seen = []
    model.backbone.encoder_norm.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    model.objective.predict(model, torch.randn(2, 24, 3))
    assert seen == [torch.Size([2, 6, 16])]  # 24 -> 12 -> 6 through two distilling layers


def _model(encoder_layers=2, lookback=24, horizon=6):
    return tiny_model(base={
        "tokenizer": {"name": "time-step", "horizon": horizon},
        "head": {"name": "forecast", "lookback": 3, "horizon": 3},
        "backbone": {"name": "informer", "d_model": 16, "n_heads": 2, "encoder_layers": encoder_layers, "label_len": 12, "horizon": horizon, "factor": 2.0},
        "objective": {"name": "mse"},
    }).model.eval()


def test_the_generative_decoder_forecasts_the_horizon_in_one_pass():
    torch.manual_seed(0)
    model = _model()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.randn(4, 24, 3)
    forecast = model.objective.predict(model, x)
    assert seen == [torch.Size([4, 18, 16])] and forecast.shape == (4, 6, 3)
    assert torch.equal(forecast, model.objective.predict(model, x))  # evaluation ranks with all keys: deterministic


def test_runnable_config_assembles_and_trains_a_batch():
    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "informer.yaml")
    assert built.data.info["name"] == "elnino"
