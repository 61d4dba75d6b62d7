"""The embedded statsmodels series, their windows and splits, and the shared forecasting pieces."""

import numpy as np
import pytest
import torch

from genloom.plugins.baseline.forecast import (
    ForecastHead,
    LinearBaseline,
    MseObjective,
    baseline_scores,
    evaluate,
    metrics,
    seasonal_naive,
)
from genloom.plugins.baseline.series import (
    build_macrodata,
    build_statsmodels_series,
    build_sunspots,
    split_borders,
    window_starts,
)
from genloom.plugins.baseline.series_config import (
    MACRODATA_COLUMNS,
    MACRODATA_LEVELS,
    ForecastHeadConfig,
    MacrodataConfig,
    StatsmodelsSeriesConfig,
    SunspotsConfig,
)


def _raw_macrodata():
    import statsmodels.api as sm

    return sm.datasets.macrodata.load_pandas().data


@pytest.mark.parametrize("transform,length", [("levels", 203), ("growth", 202)])
def test_macrodata_timeline_and_transform(transform, length):
    data = build_macrodata(MacrodataConfig(transform=transform))
    raw = _raw_macrodata()
    assert data.raw.shape == (length, len(MACRODATA_COLUMNS))
    assert data.info["variates"] == list(MACRODATA_COLUMNS) and data.info["num_variates"] == 12
    for j, column in enumerate(MACRODATA_COLUMNS):
        values = raw[column].to_numpy(dtype=float)
        if transform == "growth" and column in MACRODATA_LEVELS:
            expect = 100.0 * np.diff(np.log(values))
        elif transform == "growth":
            expect = values[1:]
        else:
            expect = values
        np.testing.assert_allclose(data.raw[:, j], expect, rtol=1e-12, atol=1e-12)


def test_splits_are_time_ordered_and_windows_respect_borders():
    config = MacrodataConfig(lookback=16, horizon=4)
    data = build_macrodata(config)
    borders = data.info["borders"]
    T = data.raw.shape[0]
    assert borders == split_borders(T, 0.1, 0.2)
    assert borders["train"][0] == 0 and borders["train"][1] == borders["val"][0] and borders["val"][1] == borders["test"][0] and borders["test"][1] == T
    assert borders["test"][1] - borders["test"][0] == round(0.2 * T)
    targets = {}
    for split in ("train", "val", "test"):
        ds = data.load(split)
        begin, end = borders[split]
        starts = ds.starts
        assert len(starts) > 0
        target_begin, target_end = starts + config.lookback, starts + config.lookback + config.horizon
        assert (target_begin >= begin).all() and (target_end <= end).all(), f"{split} targets cross the split border"
        assert (starts >= 0).all()
        if split == "train":
            assert (starts >= begin).all(), "a training lookback reaches outside the training part"
        # every admissible target start is used exactly once (stride 1)
        assert list(target_begin) == list(range(max(begin, config.lookback), end - config.horizon + 1))
        targets[split] = {int(t) + k for t in target_begin for k in range(config.horizon)}
        # samples are contiguous cuts of the normalised timeline
        x, y = ds.tensors()
        i = len(ds) // 2
        s = int(starts[i])
        assert torch.equal(ds[i]["x"], data.values[s:s + 16]) and torch.equal(ds[i]["y"], data.values[s + 16:s + 20])
        assert torch.equal(x[i], ds[i]["x"]) and torch.equal(y[i], ds[i]["y"])
        assert x.shape == (len(ds), 16, 12) and y.shape == (len(ds), 4, 12) and x.dtype == torch.float32
    assert not (targets["train"] & targets["val"]) and not (targets["val"] & targets["test"]) and not (targets["train"] & targets["test"])
    # test lookbacks may reach back into validation (that is what makes the test split usable)
    assert int(data.load("test").starts[0]) < borders["test"][0]


def test_normaliser_is_fitted_on_the_training_part_only():
    data = build_macrodata(MacrodataConfig(transform="levels"))
    train_end = data.info["borders"]["train"][1]
    train = data.raw[:train_end]
    np.testing.assert_allclose(data.scaler.mean, train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(data.scaler.std, train.std(0), rtol=1e-12)
    normalised = data.values[:train_end].double()
    assert normalised.mean(0).abs().max() < 1e-5 and (normalised.std(0, unbiased=False) - 1).abs().max() < 1e-5
    # the test part is not standardised by its own statistics (trending levels drift far from 0)
    assert data.values[train_end:].mean(0).abs().max() > 1.0
    # the inverse maps back to original units
    np.testing.assert_allclose(data.scaler.inverse(data.values.double().numpy()), data.raw, rtol=1e-5, atol=1e-3)
    raw = build_macrodata(MacrodataConfig(transform="levels", normalize=False))
    assert np.allclose(raw.values.double().numpy(), raw.raw, rtol=1e-6)


def test_sunspots_univariate_yearly():
    data = build_sunspots(SunspotsConfig())
    assert data.raw.shape == (309, 1) and data.info["variates"] == ["sunactivity"] and data.info["season"] == 11
    assert data.index[0] == 1700 and data.index[-1] == 2008
    x, y = data.load("train").tensors()
    assert x.shape[1:] == (32, 1) and y.shape[1:] == (8, 1)
    sqrt = build_sunspots(SunspotsConfig(transform="sqrt"))
    np.testing.assert_allclose(sqrt.raw, np.sqrt(data.raw))


def test_generic_statsmodels_series_fills_gaps():
    co2 = build_statsmodels_series(StatsmodelsSeriesConfig(dataset="co2", lookback=52, horizon=13))
    assert co2.raw.shape == (2284, 1) and np.isfinite(co2.raw).all()
    nile = build_statsmodels_series(StatsmodelsSeriesConfig(dataset="nile", lookback=8, horizon=2))
    assert nile.info["variates"] == ["volume"]  # the year column is dropped
    with pytest.raises(ValueError, match="no data set"):
        build_statsmodels_series(StatsmodelsSeriesConfig(dataset="not_a_dataset"))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="variates"):
        MacrodataConfig(variates=["realgdp", "gdp"])
    with pytest.raises(ValueError, match="lookback"):
        SunspotsConfig(lookback=0)
    with pytest.raises(ValueError, match="val_fraction"):
        SunspotsConfig(val_fraction=0.5, test_fraction=0.45)
    with pytest.raises(ValueError, match="test split"):
        build_sunspots(SunspotsConfig(lookback=40, horizon=70))


def test_window_starts_reach_back_but_never_before_zero():
    assert list(window_starts((0, 10), 3, 2)) == [0, 1, 2, 3, 4, 5]
    assert list(window_starts((10, 14), 3, 2)) == [7, 8, 9]
    assert list(window_starts((0, 10), 3, 2, stride=2)) == [0, 2, 4]


def test_datasets_are_registered_and_bind_the_window_layout():
    from genloom.testing import tiny_model

    built = tiny_model(base={
        "data": {"name": "macrodata", "lookback": 12, "horizon": 3, "variates": ["realgdp", "cpi", "unemp"]},
        "tokenizer": {"name": "variate"}, "head": {"name": "forecast"},
        "backbone": {"name": "itransformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, "objective": {"name": "mse"},
    }, data=True)
    assert built.ctx.lookback == 12 and built.ctx.horizon == 3 and built.ctx.num_variates == 3
    assert built.model.head.embedding.in_features == 12 and built.model.head.projection.out_features == 3
    batch = built.data.collate([built.data.load("train")[i] for i in range(4)])
    assert batch["x"].shape == (4, 12, 3) and batch["y"].shape == (4, 3, 3)
    out = built.model.loss(batch)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    sun = tiny_model(base={"data": {"name": "sunspots"}, "tokenizer": {"name": "variate"}, "head": {"name": "forecast"},
                           "backbone": {"name": "itransformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, "objective": {"name": "mse"}}, data=True)
    assert sun.ctx.num_variates == 1 and sun.ctx.season == 11


# -- shared forecasting pieces ----------------------------------------------------------------

def test_seasonal_naive_repeats_the_last_season():
    x = torch.arange(10.0).reshape(1, 10, 1)
    assert seasonal_naive(x, 5, season=3)[0, :, 0].tolist() == [7.0, 8.0, 9.0, 7.0, 8.0]
    assert seasonal_naive(x, 3, season=1)[0, :, 0].tolist() == [9.0, 9.0, 9.0]
    with pytest.raises(ValueError, match="season"):
        seasonal_naive(x, 2, season=11)


def test_linear_baseline_recovers_an_exact_linear_map():
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 6), torch.randn(3)
    x = torch.randn(200, 6, 4)
    y = torch.einsum("blv,hl->bhv", x, weight) + bias[None, :, None]
    linear = LinearBaseline().fit(x, y)
    assert torch.allclose(linear.weight, weight, atol=1e-5) and torch.allclose(linear.bias, bias, atol=1e-5)
    assert metrics(linear(x), y)["mse"] < 1e-9
    ridge = LinearBaseline(ridge=1e3).fit(x, y)
    assert ridge.weight.norm() < 0.5 * weight.norm()  # ridge shrinks


def test_metrics_and_evaluate():
    pred, target = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert metrics(pred, target) == {"mse": 2.5, "mae": 1.5}
    data = build_sunspots(SunspotsConfig())
    x, y = data.load("test").tensors()
    scores = evaluate(lambda batch: torch.zeros(batch.shape[0], 8, 1), data, "test", batch_size=7)
    assert abs(scores["mse"] - float((y.double() ** 2).mean())) < 1e-9
    both = baseline_scores(data)
    assert set(both) == {"seasonal-naive", "linear"} and all(s["mse"] > 0 for s in both.values())


def test_forecast_head_and_mse_objective():
    torch.manual_seed(0)
    config = ForecastHeadConfig(d_model=8, lookback=5, horizon=3)
    head = ForecastHead(config.lookback, config.horizon, config.d_model)
    tokens = torch.randn(2, 4, 5)
    h = head.embed(tokens)
    assert h.shape == (2, 4, 8) and head(h).shape == (2, 4, 3)
    with pytest.raises(ValueError, match="lookback"):
        head.embed(torch.randn(2, 4, 6))

    class Identity(torch.nn.Module):
        def forward(self, h, *, pattern=None, state=None, valid=None):
            return h

    from genloom.core.model import GenerativeModel

    objective = MseObjective("full")
    model = GenerativeModel(None, head, Identity(), objective, ctx=None)
    batch = {"x": torch.randn(2, 5, 4), "y": torch.randn(2, 3, 4)}
    out = model.loss(batch)
    expect = head(head.embed(batch["x"].transpose(1, 2))).transpose(1, 2)
    assert torch.allclose(out["loss"], ((expect - batch["y"]) ** 2).mean(), atol=1e-6)
    assert torch.allclose(out["mae"], (expect - batch["y"]).abs().mean(), atol=1e-6)
    out["loss"].backward()
    assert head.embedding.weight.grad is not None and head.projection.weight.grad is not None
