"""The forecasting harness: metrics against closed forms, rolling origins, no leakage, baselines, heads, outputs."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genloom.toolkit import forecasting as fc
from genloom.toolkit.forecasting_heads import GaussianHead, MixtureForecast, MixtureHead, QuantileHead


# -- metrics ----------------------------------------------------------------------------------

def test_gaussian_crps_closed_form_matches_its_monte_carlo_estimate():
    rng = np.random.default_rng(0)
    mean, std = np.array([0.0, 1.5, -2.0]), np.array([1.0, 0.5, 3.0])
    y = np.array([0.3, 0.2, 1.0])
    draws = mean + std * rng.standard_normal((50_000, 3))
    closed = fc.crps_gaussian(mean, std, y)
    assert np.allclose(closed, fc.crps_samples(draws, y), rtol=2e-2)
    # at the mean of a standard normal the CRPS is (sqrt(2) - 1) / sqrt(pi)
    assert fc.crps_gaussian(0.0, 1.0, 0.0) == pytest.approx((np.sqrt(2) - 1) / np.sqrt(np.pi), abs=1e-12)


def test_sample_crps_equals_the_pairwise_definition():
    rng = np.random.default_rng(1)
    draws, y = rng.standard_normal((7, 4)), rng.standard_normal(4)
    brute = np.abs(draws - y).mean(0) - 0.5 * np.abs(draws[:, None] - draws[None]).mean((0, 1))
    assert np.allclose(fc.crps_samples(draws, y), brute, atol=1e-12)


def test_quantile_crps_approaches_the_gaussian_crps_with_many_levels():
    from scipy.stats import norm

    levels = np.linspace(0.005, 0.995, 199)
    quantiles = {q: np.array([norm.ppf(q)]) for q in levels}
    assert fc.crps_quantiles(quantiles, np.array([0.7]))[0] == pytest.approx(fc.crps_gaussian(0.0, 1.0, 0.7), rel=2e-2)


def test_pinball_and_mase_by_hand():
    y = np.array([[2.0]])
    losses = fc.pinball({0.1: np.array([[1.0]]), 0.9: np.array([[4.0]])}, y)
    assert losses[0, 0] == pytest.approx((0.1 * 1.0 + 0.1 * 2.0) / 2)  # under by 1 at q=0.1, over by 2 at q=0.9
    history = np.array([[1.0], [3.0], [2.0], [6.0]])
    assert fc.mase_scale(history, 1)[0] == pytest.approx((2 + 1 + 4) / 3)
    assert fc.mase_scale(history, 2)[0] == pytest.approx((1 + 3) / 2)
    # MASE in a table: |error| / in-sample naive MAE of that origin's history
    values = np.array([1.0, 3.0, 2.0, 6.0, 8.0])[:, None]
    origins = fc.rolling_origins(5, 1, 4)
    table = fc.evaluate(values, {"const": lambda h: fc.Forecast(np.array([[5.0]]))}, origins)
    assert table.rows[0].overall()["mase"] == pytest.approx(3.0 / (7 / 3))


# -- rolling origins and leakage ------------------------------------------------------------------

def test_rolling_origins_cover_the_right_windows():
    expanding = fc.rolling_origins(20, 3, 10, step=2)
    assert [o.cutoff for o in expanding] == [10, 12, 14, 16]
    assert all(o.train == (0, o.cutoff) and o.test == (o.cutoff, o.cutoff + 3) for o in expanding)
    sliding = fc.rolling_origins(20, 3, 10, step=3, window="sliding", window_size=6)
    assert [(o.start, o.cutoff) for o in sliding] == [(4, 10), (7, 13), (10, 16)]
    assert [o.cutoff for o in fc.rolling_origins(20, 3, 10, count=2)] == [10, 11]
    assert fc.rolling_origins(20, 3, 17)[-1].test == (17, 20)  # the last horizon ends with the timeline
    with pytest.raises(ValueError, match="first_cutoff"):
        fc.rolling_origins(20, 3, 18)
    with pytest.raises(ValueError, match="window"):
        fc.rolling_origins(20, 3, 10, window="growing")


def test_each_forecaster_sees_exactly_the_history_before_its_cutoff():
    values = np.arange(30, dtype=float)[:, None]
    origins = fc.rolling_origins(30, 2, 20, step=3, window="sliding", window_size=8)
    seen = []

    def recorder(history):
        seen.append(history.copy())
        history[:] = -1  # writing into it cannot touch the timeline
        return fc.Forecast(np.zeros((2, 1)))

    fc.evaluate(values, {"recorder": recorder}, origins)
    assert [(h[0, 0], h[-1, 0], len(h)) for h in seen] == [(o.start, o.cutoff - 1, 8) for o in origins]
    assert np.array_equal(values[:, 0], np.arange(30))


def test_normalisation_statistics_do_not_move_when_the_test_part_changes():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((50, 3)) * 4 + 2
    origins = fc.rolling_origins(50, 5, 35)
    before = fc.normaliser_for(values, origins)
    changed = values.copy()
    changed[35:] = 1e6 * rng.standard_normal((15, 3))
    after = fc.normaliser_for(changed, origins)
    assert np.array_equal(before.mean, after.mean) and np.array_equal(before.std, after.std)
    # the broken variant: statistics of the whole timeline move with the test part
    assert not np.allclose(fc.Normaliser.fit(values).mean, fc.Normaliser.fit(changed).mean)


def test_series_data_scaler_is_fitted_on_the_training_split_only():
    from genloom.plugins.baseline.series import SeriesData
    from genloom.plugins.baseline.series_config import NileConfig

    rng = np.random.default_rng(0)
    values = rng.standard_normal((100, 1))
    config = NileConfig()
    data = SeriesData(values, ["x"], config, name="synthetic", season=1)
    train_end = data.borders["train"][1]
    changed = values.copy()
    changed[train_end:] += 100.0
    other = SeriesData(changed, ["x"], config, name="synthetic", season=1)
    assert np.array_equal(data.scaler.mean, other.scaler.mean) and np.array_equal(data.scaler.std, other.scaler.std)
    assert torch.equal(data.load("train").tensors()[0], other.load("train").tensors()[0])


# -- baselines --------------------------------------------------------------------------------

def test_seasonal_naive_and_linear_baselines_are_exact_where_they_should_be():
    season = np.tile(np.array([1.0, 4.0, 2.0]), 10)[:, None]
    forecast = fc.SeasonalNaive(5, 3)(season)
    assert np.array_equal(forecast.mean[:, 0], [1.0, 4.0, 2.0, 1.0, 4.0])
    assert np.allclose(forecast.std, 1e-8)  # a perfectly seasonal history has no seasonal-difference noise
    t = np.arange(40, dtype=float)
    line = np.stack([2 * t + 1, -t], axis=1)
    linear = fc.LinearForecaster(3, lookback=4)(line)
    assert np.allclose(linear.mean, np.stack([2 * np.arange(40, 43) + 1, -np.arange(40, 43.0)], 1), atol=1e-4)


def test_arima_and_ets_beat_seasonal_naive_on_an_ar1_process_with_calibrated_intervals():
    rng = np.random.default_rng(0)
    n = 160
    y = np.zeros(n)
    for t in range(1, n):
        y[t] = 0.8 * y[t - 1] + rng.standard_normal()
    origins = fc.rolling_origins(n, 2, 120, step=4)
    table = fc.evaluate(y, {"naive": fc.SeasonalNaive(2, 1), "arima": fc.ArimaForecaster(2, order=(1, 0, 0)), "ets": fc.EtsForecaster(2)}, origins)
    scores = {r.name: r.overall() for r in table.rows}
    assert scores["arima"]["mse"] < scores["naive"]["mse"]
    assert scores["arima"]["crps"] < scores["naive"]["crps"]
    assert 0.5 < scores["arima"]["coverage"] <= 1.0
    assert np.isfinite(scores["ets"]["mse"])
    assert "MSE per step" in table.to_markdown()


# -- probabilistic heads --------------------------------------------------------------------------

def _affine(t):
    # a stand-in for a series tokenizer's decode: transpose (B, N, H) -> (B, H, N), then scale 3, shift 5
    return t.transpose(1, 2) * 3.0 + 5.0


def test_gaussian_head_maps_its_distribution_through_the_decode():
    torch.manual_seed(0)
    head = GaussianHead(8, 4, 16).double()
    raw = head(torch.randn(2, 3, 16, dtype=torch.float64))
    token_space, data_space = head.distribution(raw), head.distribution(raw, decode=_affine)
    assert torch.allclose(data_space.mean, _affine(token_space.mean))
    assert torch.allclose(data_space.std, 3.0 * token_space.std.transpose(1, 2))
    levels = [0.1, 0.5, 0.9]
    assert torch.allclose(data_space.quantile(levels), torch.stack([_affine(q) for q in token_space.quantile(levels)]))


def test_mixture_quantiles_invert_its_cdf_and_its_samples_follow_it():
    torch.manual_seed(0)
    head = MixtureHead(8, 2, 16, components=3).double()
    with torch.no_grad():
        dist = head.distribution(head(torch.randn(1, 2, 16, dtype=torch.float64)), decode=_affine, layout=lambda t: t.transpose(1, 2))
    assert isinstance(dist, MixtureForecast) and torch.allclose(dist.weights.sum(-1), torch.ones(1, 2, 2, dtype=torch.float64))
    for q in (0.05, 0.5, 0.9):
        assert torch.allclose(dist.cdf(dist.quantile([q])[0]), torch.full((1, 2, 2), q, dtype=torch.float64), atol=1e-9)
    draws = dist.sample(40_000, torch.Generator().manual_seed(0))
    assert torch.allclose(draws.mean(0), dist.mean, atol=0.05 * float(dist.scale.max()))


def test_quantile_head_never_crosses_and_scores_by_pinball():
    torch.manual_seed(0)
    head = QuantileHead(8, 3, 16, levels=[0.1, 0.5, 0.9]).double()
    dist = head.distribution(head(torch.randn(4, 2, 16, dtype=torch.float64) * 10), decode=_affine)
    assert (dist.values[1:] > dist.values[:-1]).all()
    draws = dist.sample(5, torch.Generator().manual_seed(0))
    assert draws.shape == (5, 4, 3, 2)
    assert ((draws >= dist.values[0] - 1e-9) & (draws <= dist.values[-1] + 1e-9)).all()


# -- the nll objective and a run's outputs ------------------------------------------------------------

def _built(head):
    from genloom.testing import tiny_model

    return tiny_model(base={
        "data": {"name": "nile", "lookback": 8, "horizon": 2},
        "tokenizer": {"name": "variate"},
        "head": head,
        "backbone": {"name": "itransformer", "d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0},
        "objective": {"name": "nll" if head["name"] != "forecast" else "mse"},
    }, data=True)


@pytest.mark.parametrize("head", ["gaussian", "mixture", "quantile"])
def test_nll_objective_trains_every_probabilistic_head(head):
    torch.manual_seed(0)
    built = _built({"name": head})
    x, y = built.data.load("train").tensors()
    optimizer = torch.optim.Adam(built.model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = built.model.loss({"x": x, "y": y})["loss"]
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(built.model.loss({"x": x, "y": y})["loss"]) < first
    forecast = fc.model_forecaster(built.model, 8, num_samples=50)(built.data.values.double().numpy()[:60])
    assert forecast.mean.shape == (2, 1) and forecast.probabilistic


def test_nll_objective_refuses_a_point_head():
    from genloom.toolkit.forecasting_heads import NllObjective

    built = _built({"name": "forecast"})
    with pytest.raises(ValueError, match="probabilistic head"):
        NllObjective().predict_distribution(built.model, torch.zeros(1, 8, 1))


def test_a_run_writes_its_forecast_csv_plot_and_evaluation_table(tmp_path):
    torch.manual_seed(0)
    built = _built({"name": "gaussian"})
    gen = SimpleNamespace(model=built.model.eval(), ctx=built.ctx, run_dir=tmp_path)
    path = built.model.objective.generate_samples(gen, n=1, seed=0, out=None)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:5] == ["origin", "step", "horizon", "variate", "mean"] and "q0.1" in header and "truth" in header
    assert path.with_suffix(".png").stat().st_size > 1000
    text = built.model.objective.evaluate_run(gen, {"step": "2", "baselines": "seasonal-naive,linear"})
    assert "| nile | model |" in text and "seasonal-naive" in text and (tmp_path / "forecast_eval.csv").exists()
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="allowed"):
        built.model.objective.evaluate_run(gen, {"stride": "2"})


@pytest.mark.parametrize("name,variates,season", [("co2", 1, 12), ("elnino", 1, 12), ("nile", 1, 1), ("elec-equip", 1, 12), ("danish-data", 5, 4)])
def test_embedded_series_load_with_their_natural_season(name, variates, season):
    from genloom.testing import build

    data, _ = build("dataset", {"name": name})
    assert data.info["num_variates"] == variates and data.info["season"] == season
    x, y = data.load("test").tensors()
    assert x.shape[-1] == variates and len(x) > 0
