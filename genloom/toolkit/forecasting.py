"""The forecasting harness: rolling-origin evaluation, metrics, baselines, forecast files and plots.

Evaluation is honest by construction:

- **Rolling origins.** :func:`rolling_origins` places forecast cut-offs ``c`` along a timeline; at
  each one a forecaster sees only the history before ``c`` (all of it for an *expanding* window,
  the last ``window`` steps for a *sliding* one) and forecasts ``[c, c + horizon)``.
  :func:`evaluate` calls every forecaster at every origin with exactly that slice, so no
  forecaster can read a value at or after its cut-off.
- **Normalisation fitted on the training part only.** :class:`Normaliser` is fitted on the steps
  before the first cut-off (:func:`normaliser_for`); the data sets' own scaler is fitted on their
  training split. Changing any value from the first cut-off on leaves the statistics unchanged
  (a test checks it).
- **Metrics** per forecast step (``h = 1 .. horizon``) and overall: MSE, MAE and MASE (the MAE
  divided by the in-sample MAE of the seasonal-naive forecast on the history of that origin) for
  point forecasts; CRPS (closed form for Gaussians, the sample estimator for sample paths, the
  quantile approximation otherwise), the quantile (pinball) loss and the coverage of the central
  interval for probabilistic ones.
- **Baselines** in every table, refitted at every origin on the same history: seasonal naive,
  least-squares linear (lookback -> horizon), statsmodels ARIMA (order chosen by AIC on the first
  origin's history) and ETS (additive, damped trend, additive season where there is one). Each
  gives Gaussian intervals (naive and linear from their in-sample residuals, ARIMA and ETS from
  statsmodels), so CRPS and coverage are reported for them too.

A *forecaster* is any callable ``history (t, V) -> Forecast`` (numpy), so a trained genloom model
(:func:`model_forecaster`), a baseline or a third-party model are evaluated by the same code.

For a run directory: :func:`evaluate_run` (``genloom evaluate RUN``) rebuilds the run's data set,
evaluates the model and the baselines on the test cut-offs and writes ``forecast_eval.csv`` and
``forecast_eval.md``; :func:`write_run_forecast` (``genloom generate RUN``) writes the forecast CSV
(quantiles and sample paths where the model is probabilistic) and a PNG plot. The objectives of
forecasters get both entry points from :class:`ForecastOutputs`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

#: The central interval reported as coverage (and drawn in plots): 10 % and 90 % quantiles.
INTERVAL = (0.1, 0.9)
#: Quantile levels scored by the quantile loss and written to forecast files.
LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)


# ---------------------------------------------------------------------------------------------
# Forecasts and metrics
# ---------------------------------------------------------------------------------------------

@dataclass
class Forecast:
    """A forecast of ``horizon`` steps of V variates: the mean, and what is known of its distribution.

    ``std`` marks a Gaussian forecast; ``quantiles`` maps levels to (H, V) arrays; ``samples`` holds
    sample paths (S, H, V). A point forecast has none of them.
    """

    mean: np.ndarray
    std: np.ndarray | None = None
    quantiles: dict[float, np.ndarray] | None = None
    samples: np.ndarray | None = None

    @property
    def probabilistic(self) -> bool:
        return self.std is not None or self.quantiles is not None or self.samples is not None

    def quantile(self, level: float) -> np.ndarray:
        """The ``level`` quantile: exact for a Gaussian, read or interpolated from quantiles, empirical from samples."""
        if self.std is not None:
            from scipy.stats import norm

            return self.mean + norm.ppf(level) * self.std
        if self.quantiles is not None:
            levels = sorted(self.quantiles)
            stacked = np.stack([self.quantiles[q] for q in levels])
            return np.apply_along_axis(lambda column: np.interp(level, levels, column), 0, stacked)
        if self.samples is not None:
            return np.quantile(self.samples, level, axis=0)
        raise ValueError("a point forecast has no quantiles")


def crps_gaussian(mean, std, y):
    """CRPS of N(mean, std^2) at y, in closed form: std * (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))."""
    from scipy.stats import norm

    z = (np.asarray(y) - mean) / std
    return std * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def crps_samples(samples, y):
    """The sample estimator E|X - y| - E|X - X'| / 2 over the first axis (S draws), per value."""
    samples = np.sort(np.asarray(samples, dtype=np.float64), axis=0)
    n = samples.shape[0]
    first = np.abs(samples - np.asarray(y)[None]).mean(0)
    # sum_{i,j} |x_i - x_j| = 2 sum_i (2i - n - 1) x_(i) for sorted draws (1-based i)
    weights = (2 * np.arange(1, n + 1) - n - 1).reshape(-1, *([1] * (samples.ndim - 1)))
    second = 2 * (weights * samples).sum(0) / (n * n)
    return first - 0.5 * second


def pinball(quantiles: dict[float, np.ndarray], y) -> np.ndarray:
    """Per value: the mean over levels q of max(q (y - p_q), (q - 1)(y - p_q))."""
    losses = [np.maximum(q * (y - p), (q - 1) * (y - p)) for q, p in quantiles.items()]
    return np.mean(losses, axis=0)


def crps_quantiles(quantiles: dict[float, np.ndarray], y) -> np.ndarray:
    """CRPS approximated by twice the mean pinball loss over the given levels."""
    return 2 * pinball(quantiles, y)


def crps(forecast: Forecast, y) -> np.ndarray:
    """Per-value CRPS: closed form for a Gaussian, sample estimator, or quantile approximation."""
    if forecast.std is not None:
        return crps_gaussian(forecast.mean, forecast.std, y)
    if forecast.samples is not None:
        return crps_samples(forecast.samples, y)
    if forecast.quantiles is not None:
        return crps_quantiles(forecast.quantiles, y)
    raise ValueError("a point forecast has no CRPS")


def mase_scale(history: np.ndarray, season: int = 1) -> np.ndarray:
    """Per variate: the in-sample MAE of the seasonal-naive forecast, mean |y_t - y_{t-season}| (>= 1e-8)."""
    season = season if len(history) > season else 1
    scale = np.abs(history[season:] - history[:-season]).mean(0)
    return np.maximum(scale, 1e-8)


# ---------------------------------------------------------------------------------------------
# Rolling origins and normalisation
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Origin:
    """A forecast cut-off: fit on ``[start, cutoff)``, forecast ``[cutoff, cutoff + horizon)``."""

    start: int
    cutoff: int
    horizon: int

    @property
    def train(self) -> tuple[int, int]:
        return self.start, self.cutoff

    @property
    def test(self) -> tuple[int, int]:
        return self.cutoff, self.cutoff + self.horizon


def rolling_origins(length: int, horizon: int, first_cutoff: int, *, step: int = 1, count: int | None = None,
                    window: Literal["expanding", "sliding"] = "expanding", window_size: int | None = None) -> list[Origin]:
    """Cut-offs ``first_cutoff, first_cutoff + step, ...`` whose whole horizon fits in ``length`` steps.

    ``count`` keeps the first ``count`` of them. An expanding window fits on everything before the
    cut-off; a sliding one on the last ``window_size`` steps before it (default: ``first_cutoff``).
    """
    if horizon < 1 or step < 1:
        raise ValueError(f"horizon and step must be at least 1, got {horizon} and {step}")
    if not 0 < first_cutoff <= length - horizon:
        raise ValueError(f"first_cutoff must leave history before it and a horizon of {horizon} after it in {length} steps, got {first_cutoff}")
    if window not in ("expanding", "sliding"):
        raise ValueError(f"window must be 'expanding' or 'sliding', got '{window}'")
    size = window_size or first_cutoff
    if size < 1 or size > first_cutoff:
        raise ValueError(f"window_size must be between 1 and first_cutoff ({first_cutoff}), got {size}")
    cutoffs = list(range(first_cutoff, length - horizon + 1, step))
    if count is not None:
        cutoffs = cutoffs[:count]
    return [Origin(0 if window == "expanding" else c - size, c, horizon) for c in cutoffs]


@dataclass
class Normaliser:
    """Per-variate standardisation; :func:`normaliser_for` fits it on the steps before the first cut-off."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> "Normaliser":
        values = np.asarray(values, dtype=np.float64)
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, values):
        return (values - self.mean) / self.std

    def inverse(self, values):
        return values * self.std + self.mean


def normaliser_for(values: np.ndarray, origins: list[Origin]) -> Normaliser:
    """Statistics of the training part only: every step before the earliest cut-off."""
    return Normaliser.fit(np.asarray(values)[: min(o.cutoff for o in origins)])


# ---------------------------------------------------------------------------------------------
# Baselines (each refitted on the history it is given)
# ---------------------------------------------------------------------------------------------

class SeasonalNaive:
    """Repeat the last season; Gaussian intervals from the in-sample seasonal differences, widening as sqrt(k + 1)."""

    def __init__(self, horizon: int, season: int = 1):
        self.horizon, self.season = horizon, max(1, season)

    def __call__(self, history: np.ndarray) -> Forecast:
        s = self.season if len(history) > self.season else 1
        steps = np.arange(self.horizon)
        mean = history[len(history) - s + steps % s]
        sigma = np.sqrt(((history[s:] - history[:-s]) ** 2).mean(0)) if len(history) > s else np.ones(history.shape[1])
        k = steps // s  # complete seasons elapsed before step h
        return Forecast(mean, std=np.maximum(sigma[None] * np.sqrt(k + 1)[:, None], 1e-8))


def _windows(history: np.ndarray, lookback: int, horizon: int):
    starts = np.arange(0, len(history) - lookback - horizon + 1)
    x = np.stack([history[s:s + lookback] for s in starts]) if len(starts) else np.zeros((0, lookback, history.shape[1]))
    y = np.stack([history[s + lookback:s + lookback + horizon] for s in starts]) if len(starts) else np.zeros((0, horizon, history.shape[1]))
    return x, y


class LinearForecaster:
    """Least squares from the last ``lookback`` steps to the horizon (one map for all variates, with an intercept).

    Refitted on the windows inside the history; Gaussian intervals from the in-sample residuals
    of each forecast step and variate.
    """

    def __init__(self, horizon: int, lookback: int, ridge: float = 1e-6):
        self.horizon, self.lookback, self.ridge = horizon, lookback, ridge

    def __call__(self, history: np.ndarray) -> Forecast:
        x, y = _windows(history, self.lookback, self.horizon)
        if len(x) < 2:
            raise ValueError(f"the history ({len(history)} steps) holds too few windows of lookback {self.lookback} + horizon {self.horizon} to fit the linear baseline")
        inputs = x.transpose(0, 2, 1).reshape(-1, self.lookback)
        targets = y.transpose(0, 2, 1).reshape(-1, self.horizon)
        design = np.concatenate([inputs, np.ones((len(inputs), 1))], axis=1)
        penalty = self.ridge * np.eye(design.shape[1])
        penalty[-1, -1] = 0.0
        solution = np.linalg.solve(design.T @ design + penalty, design.T @ targets)
        residual = (design @ solution - targets).reshape(len(x), -1, self.horizon)  # (N, V, H)
        std = np.sqrt((residual ** 2).mean(0)).T  # (H, V)
        last = np.concatenate([history[-self.lookback:].T, np.ones((history.shape[1], 1))], axis=1)  # (V, L + 1)
        return Forecast((last @ solution).T, std=np.maximum(std, 1e-8))


class ArimaForecaster:
    """statsmodels ARIMA per variate, with a constant; the order is chosen by AIC on the first history seen.

    ``order`` fixes it instead. Later origins refit the parameters of the chosen order only.
    """

    GRID = [(p, d, q) for d in (0, 1) for p in (1, 2) for q in (0, 1)]

    def __init__(self, horizon: int, order: tuple[int, int, int] | None = None):
        self.horizon = horizon
        self.fixed = order
        self.orders: dict[int, tuple[int, int, int]] = {}

    def _fit(self, series, order):
        from statsmodels.tsa.arima.model import ARIMA

        trend = "c" if order[1] == 0 else "t"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ARIMA(series, order=order, trend=trend).fit()

    def __call__(self, history: np.ndarray) -> Forecast:
        means, stds = [], []
        for v in range(history.shape[1]):
            series = history[:, v]
            if v not in self.orders:
                if self.fixed is not None:
                    self.orders[v] = tuple(self.fixed)
                else:
                    fits = [(self._fit(series, order).aic, order) for order in self.GRID]
                    self.orders[v] = min(fits)[1]
            result = self._fit(series, self.orders[v]).get_forecast(self.horizon)
            means.append(np.asarray(result.predicted_mean))
            stds.append(np.asarray(result.se_mean))
        return Forecast(np.stack(means, 1), std=np.maximum(np.stack(stds, 1), 1e-8))


class EtsForecaster:
    """statsmodels ETS per variate: additive errors, additive damped trend, additive season (if any and two seasons fit)."""

    def __init__(self, horizon: int, season: int = 1, damped: bool = True):
        self.horizon, self.season, self.damped = horizon, season, damped

    def __call__(self, history: np.ndarray) -> Forecast:
        import pandas as pd
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        seasonal = self.season > 1 and len(history) >= 2 * self.season + 2
        means, stds = [], []
        for v in range(history.shape[1]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = ETSModel(pd.Series(history[:, v]), error="add", trend="add", damped_trend=self.damped,
                                 seasonal="add" if seasonal else None, seasonal_periods=self.season if seasonal else None)
                result = model.fit(disp=False)
                prediction = result.get_prediction(start=len(history), end=len(history) + self.horizon - 1)
            means.append(np.asarray(prediction.predicted_mean))
            stds.append(np.sqrt(np.maximum(np.asarray(prediction.forecast_variance), 0.0)))
        return Forecast(np.stack(means, 1), std=np.maximum(np.stack(stds, 1), 1e-8))


def baselines(horizon: int, season: int, lookback: int, which=("seasonal-naive", "linear", "arima", "ets")) -> dict[str, Callable]:
    """The baseline forecasters by name (a fresh, unfitted set)."""
    makers = {
        "seasonal-naive": lambda: SeasonalNaive(horizon, season),
        "linear": lambda: LinearForecaster(horizon, lookback),
        "arima": lambda: ArimaForecaster(horizon),
        "ets": lambda: EtsForecaster(horizon, season),
    }
    unknown = [w for w in which if w not in makers]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)} (known: {', '.join(makers)})")
    return {name: makers[name]() for name in which}


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

@dataclass
class Scores:
    """One forecaster's figures over all origins: overall and per forecast step (arrays of length horizon)."""

    name: str
    per_step: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    origins: int = 0

    def overall(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.per_step.items()}


@dataclass
class Table:
    """The figures of several forecasters on the same origins."""

    rows: list[Scores]
    data: str = ""
    horizon: int = 0
    origins: list[Origin] = field(default_factory=list)

    METRICS = ("mse", "mae", "mase", "crps", "quantile_loss", "coverage")

    def to_markdown(self) -> str:
        present = [m for m in self.METRICS if any(m in r.per_step for r in self.rows)]
        lines = [f"| data | forecaster | {' | '.join(present)} | MSE per step | seconds |",
                 "| --- | --- | " + " | ".join("---" for _ in present) + " | --- | --- |"]
        for r in self.rows:
            overall = r.overall()
            cells = [f"{overall[m]:.3f}" if m in overall else "-" for m in present]
            steps = " ".join(f"{v:.3f}" for v in r.per_step["mse"])
            lines.append(f"| {self.data} | {r.name} | {' | '.join(cells)} | {steps} | {r.seconds:.1f} |")
        return "\n".join(lines)

    def to_csv(self, path) -> Path:
        """One row per (forecaster, metric, step); step 0 is the average over the horizon."""
        path = Path(path)
        lines = ["data,forecaster,metric,step,value"]
        for r in self.rows:
            for metric, values in r.per_step.items():
                lines.append(f"{self.data},{r.name},{metric},0,{float(np.mean(values)):.6g}")
                lines += [f"{self.data},{r.name},{metric},{h + 1},{float(v):.6g}" for h, v in enumerate(values)]
            lines.append(f"{self.data},{r.name},seconds,0,{r.seconds:.3f}")
        path.write_text("\n".join(lines) + "\n")
        return path


def evaluate(values: np.ndarray, forecasters: dict[str, Callable[[np.ndarray], Forecast]], origins: list[Origin], *,
             season: int = 1, data: str = "") -> Table:
    """Score every forecaster at every origin on ``values`` (T, V) and return the table.

    Forecaster ``f`` is called as ``f(values[origin.start:origin.cutoff])`` and must return a
    :class:`Forecast` of ``origin.horizon`` steps; it never sees a value at or after the cut-off.
    Metrics are averaged over origins and variates, per forecast step.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    horizon = origins[0].horizon
    rows = []
    for name, forecaster in forecasters.items():
        collected: dict[str, list[np.ndarray]] = {}
        started = time.perf_counter()
        for origin in origins:
            history = values[origin.start:origin.cutoff].copy()
            truth = values[origin.cutoff:origin.cutoff + horizon]
            forecast = forecaster(history)
            if forecast.mean.shape != truth.shape:
                raise ValueError(f"forecaster '{name}' returned a forecast of shape {forecast.mean.shape}, expected {truth.shape}")
            err = forecast.mean - truth
            figures = {"mse": err ** 2, "mae": np.abs(err), "mase": np.abs(err) / mase_scale(history, season)[None]}
            if forecast.probabilistic:
                figures["crps"] = crps(forecast, truth)
                quantiles = forecast.quantiles or {q: forecast.quantile(q) for q in LEVELS}
                figures["quantile_loss"] = pinball(quantiles, truth)
                low, high = forecast.quantile(INTERVAL[0]), forecast.quantile(INTERVAL[1])
                figures["coverage"] = ((truth >= low) & (truth <= high)).astype(np.float64)
            for metric, value in figures.items():
                collected.setdefault(metric, []).append(value.mean(axis=1))  # (H,) averaged over variates
        seconds = time.perf_counter() - started
        per_step = {metric: np.mean(np.stack(v), axis=0) for metric, v in collected.items()}
        rows.append(Scores(name, per_step, seconds, len(origins)))
    return Table(rows, data, horizon, list(origins))


# ---------------------------------------------------------------------------------------------
# genloom models as forecasters
# ---------------------------------------------------------------------------------------------

def model_forecaster(model, lookback: int, *, num_samples: int = 200, seed: int | None = 0) -> Callable[[np.ndarray], Forecast]:
    """``history -> Forecast`` for an assembled model whose objective can ``predict`` (and maybe ``predict_distribution``)."""
    import torch

    objective = model.objective

    def forecast(history: np.ndarray) -> Forecast:
        if len(history) < lookback:
            raise ValueError(f"the model needs {lookback} steps of history, got {len(history)}")
        param = next(model.parameters(), None)
        x = torch.as_tensor(history[-lookback:][None], dtype=param.dtype if param is not None else torch.float32)
        model.eval()
        with torch.no_grad():
            if hasattr(objective, "predict_distribution"):
                dist = objective.predict_distribution(model, x)
                mean = dist.mean[0].double().numpy()
                if getattr(dist, "std", None) is not None:
                    return Forecast(mean, std=dist.std[0].double().numpy())
                if hasattr(dist, "levels"):
                    return Forecast(mean, quantiles={q: v[0].double().numpy() for q, v in zip(dist.levels, dist.values)})
                generator = torch.Generator()
                if seed is None:
                    generator.seed()  # a fresh seed, as genloom generate gives when none is set
                else:
                    generator.manual_seed(seed)
                return Forecast(mean, samples=dist.sample(num_samples, generator)[:, 0].double().numpy())
            return Forecast(objective.predict(model, x)[0].double().numpy())

    return forecast


def run_data(gen):
    """The data set of a loaded run, rebuilt from its config (the same splits and train-fitted scaler)."""
    from genloom.core.errors import ConfigError
    from genloom.core.model import build_component

    config = gen.model.config
    spec = config.components.get("data") if config is not None else None
    if spec is None:
        raise ConfigError("the run's config has no data node; a forecaster is evaluated on its own data set", path="data")
    data = build_component(spec, gen.ctx)
    if getattr(data, "info", {}).get("modality") != "series":
        raise ConfigError(f"data set '{spec.record.name}' is not a series data set (the forecasting harness needs one)", path="data")
    return data


def _season(data) -> int:
    return max(1, min(int(data.info.get("season", 1)), data.info["lookback"]))


EVALUATE_OPTIONS = ("step", "count", "window", "window_size", "baselines", "out")


def evaluate_run(gen, **options) -> str:
    """Evaluate a run and the baselines on its data set's test cut-offs; write the table; return it as markdown.

    Options (``genloom evaluate RUN key=value``): ``step`` between cut-offs (1), ``count`` of them
    (all), ``window`` (``expanding`` or ``sliding``, for the baselines' refits) and ``window_size``,
    ``baselines`` (comma list of seasonal-naive, linear, arima, ets, or ``none``), ``out`` (a
    directory; default the run directory).
    """
    from genloom.core.errors import ConfigError

    unknown = [k for k in options if k not in EVALUATE_OPTIONS]
    if unknown:
        raise ConfigError(f"unknown evaluate option(s) {', '.join(unknown)} (allowed: {', '.join(EVALUATE_OPTIONS)})")
    step, count = int(options.get("step", 1)), options.get("count")
    window, window_size = str(options.get("window", "expanding")), options.get("window_size")
    which, out = options.get("baselines", "seasonal-naive,linear,arima,ets"), options.get("out")
    data = run_data(gen)
    info = data.info
    values = data.values.double().numpy()
    begin, end = info["borders"]["test"]
    first = max(begin, info["lookback"])
    try:
        origins = rolling_origins(len(values), info["horizon"], first, step=step, count=None if count is None else int(count),
                                  window=window, window_size=None if window_size is None else int(window_size))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    forecasters = {"model": model_forecaster(gen.model, info["lookback"])}
    names = [] if str(which) in ("none", "") else [w.strip() for w in str(which).split(",")]
    try:
        forecasters.update(baselines(info["horizon"], _season(data), info["lookback"], names))
    except ValueError as error:
        raise ConfigError(str(error), path="baselines") from error
    table = evaluate(values, forecasters, origins, season=_season(data), data=info["name"])
    directory = Path(out) if out else Path(gen.run_dir or ".")
    directory.mkdir(parents=True, exist_ok=True)
    table.to_csv(directory / "forecast_eval.csv")
    text = (f"{info['name']}: {len(origins)} test cut-offs ({window} window), horizon {info['horizon']}, "
            f"scores on the scale normalised by the training part\n\n{table.to_markdown()}\n")
    (directory / "forecast_eval.md").write_text(text)
    return text + f"\nwrote {directory / 'forecast_eval.csv'} and {directory / 'forecast_eval.md'}"


# ---------------------------------------------------------------------------------------------
# Forecast files and plots (genloom generate)
# ---------------------------------------------------------------------------------------------

def forecast_rows(forecast: Forecast, variates, *, origin: str, first_step: int, truth: np.ndarray | None = None):
    """CSV rows (dicts) of one forecast: one row per (step, variate) with mean, quantiles, truth and samples."""
    rows = []
    quantiles = {q: forecast.quantile(q) for q in LEVELS} if forecast.probabilistic else {}
    for h in range(forecast.mean.shape[0]):
        for v, variate in enumerate(variates):
            row = {"origin": origin, "step": first_step + h, "horizon": h + 1, "variate": variate, "mean": forecast.mean[h, v]}
            row.update({f"q{q:g}": quantiles[q][h, v] for q in quantiles})
            row["truth"] = truth[h, v] if truth is not None else ""
            if forecast.samples is not None:
                row.update({f"sample_{i}": forecast.samples[i, h, v] for i in range(forecast.samples.shape[0])})
            rows.append(row)
    return rows


def write_csv(rows: list[dict], path) -> Path:
    import csv

    path = Path(path)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _map(forecast: Forecast, inverse) -> Forecast:
    """A forecast mapped back to original units by an affine, increasing ``inverse``."""
    mean = inverse(forecast.mean)
    return Forecast(
        mean,
        std=None if forecast.std is None else inverse(forecast.mean + forecast.std) - mean,
        quantiles=None if forecast.quantiles is None else {q: inverse(v) for q, v in forecast.quantiles.items()},
        samples=None if forecast.samples is None else np.stack([inverse(s) for s in forecast.samples]),
    )


def plot_forecasts(history: np.ndarray, panels: list[tuple[int, Forecast, np.ndarray | None]], variates, path, *, max_variates: int = 4,
                   title: str = "") -> Path:
    """PNG: per variate, the history, each forecast (mean and central interval) and the truth where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(range(min(len(variates), max_variates)))
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 2.2 * len(shown)), squeeze=False)
    for row, v in enumerate(shown):
        ax = axes[row, 0]
        ax.plot(np.arange(len(history)), history[:, v], color="0.3", lw=1, label="history")
        for first, forecast, truth in panels:
            steps = first + np.arange(forecast.mean.shape[0])
            ax.plot(steps, forecast.mean[:, v], color="C0", lw=1.5, label="forecast" if first == panels[0][0] else None)
            if forecast.probabilistic:
                ax.fill_between(steps, forecast.quantile(INTERVAL[0])[:, v], forecast.quantile(INTERVAL[1])[:, v], color="C0", alpha=0.25,
                                label=f"{int(100 * (INTERVAL[1] - INTERVAL[0]))} % interval" if first == panels[0][0] else None)
            if forecast.samples is not None:
                for path_values in forecast.samples[:5, :, v]:
                    ax.plot(steps, path_values, color="C0", lw=0.5, alpha=0.5)
            if truth is not None:
                ax.plot(steps, truth[:, v], color="C3", lw=1, ls="--", label="truth" if first == panels[0][0] else None)
        ax.set_ylabel(str(variates[v]))
        if row == 0:
            ax.legend(loc="upper left", fontsize=7)
            if title:
                ax.set_title(title, fontsize=9)
    axes[-1, 0].set_xlabel("time step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_run_forecast(gen, *, num_samples: int = 1, seed: int | None = 0, out=None) -> Path:
    """Forecast the run's last test window (truth known) and the steps after the timeline; write CSV + PNG.

    Values are in the data's original units. A probabilistic model adds quantile columns, and
    ``num_samples`` > 1 sample paths where its distribution has no closed form. Returns the CSV path
    (the PNG lies beside it).
    """
    data = run_data(gen)
    info = data.info
    lookback, horizon = info["lookback"], info["horizon"]
    values = data.values.double().numpy()
    scaler = info["scaler"]
    forecaster = model_forecaster(gen.model, lookback, num_samples=max(num_samples, 1), seed=seed)
    last_test = len(values) - horizon
    panels = []
    rows = []
    for origin, cutoff, truth in (("last-test-window", last_test, values[last_test:]), ("future", len(values), None)):
        forecast = _map(forecaster(values[:cutoff]), scaler.inverse)
        if forecast.samples is not None and num_samples <= 1:
            forecast = Forecast(forecast.mean, quantiles={q: forecast.quantile(q) for q in LEVELS})
        original_truth = None if truth is None else scaler.inverse(truth)
        panels.append((cutoff, forecast, original_truth))
        rows += forecast_rows(forecast, info["variates"], origin=origin, first_step=cutoff, truth=original_truth)
    path = Path(out) if out else Path(gen.run_dir or ".") / "forecast.csv"
    if path.suffix != ".csv":
        path = path / "forecast.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(rows, path)
    shown = scaler.inverse(values)[max(0, last_test - 4 * lookback):]
    offset = max(0, last_test - 4 * lookback)
    plot_forecasts(np.concatenate([np.full((offset, shown.shape[1]), np.nan), shown]), panels, info["variates"], path.with_suffix(".png"),
                   title=f"{info['name']}: forecast of the last test window and beyond the data")
    return path


class ForecastOutputs:
    """Mixin for forecasting objectives: ``genloom generate`` writes a forecast, ``genloom evaluate`` a table."""

    def generate_samples(self, gen, *, n: int = 1, seed: int | None = 0, out=None, decoder=None) -> Path:
        return write_run_forecast(gen, num_samples=n, seed=seed, out=out)

    def evaluate_run(self, gen, options: dict) -> str:
        return evaluate_run(gen, **options)
