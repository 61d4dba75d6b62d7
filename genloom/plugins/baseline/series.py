"""Embedded time series from statsmodels, cut into forecasting windows (no downloads).

Each factory returns a :class:`SeriesData`: the whole (normalised) timeline, its time-ordered
split borders, ``info`` (name, variates, lookback, horizon, season, scaler, borders) and
``load(split, tokenizer, ctx)`` giving a torch ``Dataset`` of ``{"x": (lookback, V), "y":
(horizon, V)}`` float32 samples. Samples are not tokenized here: a series tokenizer turns a batch
into tokens inside the model, so ``tokenizer`` is accepted and unused.

Splits: the timeline of T steps is cut in time order into train | val | test (by default 70/10/20
%). A window belongs to the split that contains its whole target ``y``; only its lookback ``x`` may
reach back across the border (a training window lies wholly inside the training part). The
normaliser (per-variate mean and standard deviation) is fitted on the training part only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genloom.core.data import DataSource
from genloom.plugins.baseline.series_config import (
    MACRODATA_LEVELS,
    Co2Config,
    DanishDataConfig,
    ElecEquipConfig,
    ElninoConfig,
    NileConfig,
    MacrodataConfig,
    SeriesWindowConfig,
    StatsmodelsSeriesConfig,
    SunspotsConfig,
)

SPLITS = ("train", "val", "test")
_CALENDAR_COLUMNS = {"year", "quarter", "month", "day", "date", "time"}


@dataclass
class Scaler:
    """Per-variate standardisation fitted on the training part of the timeline."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> "Scaler":
        std = values.std(axis=0)
        return cls(mean=values.mean(axis=0), std=np.where(std > 0, std, 1.0))

    @classmethod
    def identity(cls, num_variates: int) -> "Scaler":
        return cls(mean=np.zeros(num_variates), std=np.ones(num_variates))

    def transform(self, values):
        """Original units -> normalised (numpy arrays or tensors whose last axis is the variate)."""
        mean, std = self._like(values)
        return (values - mean) / std

    def inverse(self, values):
        """Normalised -> original units (numpy arrays or tensors whose last axis is the variate)."""
        mean, std = self._like(values)
        return values * std + mean

    def _like(self, values):
        if isinstance(values, torch.Tensor):
            return (torch.as_tensor(self.mean, dtype=values.dtype, device=values.device),
                    torch.as_tensor(self.std, dtype=values.dtype, device=values.device))
        return self.mean, self.std


class WindowDataset(torch.utils.data.Dataset):
    """Windows of a (T, V) timeline: sample i is x = values[s:s+L], y = values[s+L:s+L+H], s = starts[i]."""

    def __init__(self, values: torch.Tensor, starts: np.ndarray, lookback: int, horizon: int):
        self.values = values
        self.starts = np.asarray(starts, dtype=np.int64)
        self.lookback = lookback
        self.horizon = horizon

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = int(self.starts[index])
        cut = s + self.lookback
        return {"x": self.values[s:cut], "y": self.values[cut:cut + self.horizon]}

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All windows stacked: x (N, L, V) and y (N, H, V)."""
        offsets = torch.as_tensor(self.starts)[:, None]
        x_index = offsets + torch.arange(self.lookback)[None]
        y_index = offsets + self.lookback + torch.arange(self.horizon)[None]
        return self.values[x_index], self.values[y_index]


def split_borders(length: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    """[start, end) of each split on a timeline of ``length`` steps, in time order."""
    n_test = int(round(length * test_fraction))
    n_val = int(round(length * val_fraction))
    n_train = length - n_val - n_test
    return {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, length)}


def window_starts(border: tuple[int, int], lookback: int, horizon: int, stride: int = 1) -> np.ndarray:
    """Starts s of the windows whose target [s+L, s+L+H) lies inside ``border`` (x may reach back, never before 0)."""
    begin, end = border
    first_target = max(begin, lookback)
    targets = np.arange(first_target, end - horizon + 1, stride)
    return targets - lookback


class SeriesData(DataSource):
    """A multivariate timeline with time-ordered splits: ``info`` and ``load(split, tokenizer, ctx)``."""

    def __init__(self, values: np.ndarray, variates: list[str], config: SeriesWindowConfig, name: str, season: int, index=None):
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if not np.isfinite(values).all():
            raise ValueError(f"data set '{name}' has missing or infinite values")
        self.config = config
        self.batch_size = config.batch_size
        self.eval_batch_size = config.eval_batch_size
        self.name = name
        self.raw = values
        self.index = index
        self.borders = split_borders(len(values), config.val_fraction, config.test_fraction)
        train_end = self.borders["train"][1]
        self.scaler = Scaler.fit(values[:train_end]) if config.normalize else Scaler.identity(values.shape[1])
        self.values = torch.tensor(self.scaler.transform(values), dtype=torch.float32)
        self.starts = {s: window_starts(b, config.lookback, config.horizon, config.stride) for s, b in self.borders.items()}
        for split in ("train", "test"):
            if len(self.starts[split]) == 0:
                raise ValueError(
                    f"data set '{name}': the {split} split ({self.borders[split][1] - self.borders[split][0]} steps) holds no window of "
                    f"lookback {config.lookback} + horizon {config.horizon}; shorten them or change the split fractions")
        self.info = {
            "modality": "series",
            "name": name,
            "variates": list(variates),
            "num_variates": len(variates),
            "lookback": config.lookback,
            "horizon": config.horizon,
            "season": season,
            "scaler": self.scaler,
            "borders": dict(self.borders),
        }

    def load(self, split: str, tokenizer=None, ctx=None) -> WindowDataset:
        if split not in self.starts:
            raise ValueError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
        return WindowDataset(self.values, self.starts[split], self.config.lookback, self.config.horizon)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(v)}" for s, v in self.starts.items())
        return f"SeriesData({self.name}: T={len(self.raw)}, V={self.raw.shape[1]}, windows {sizes})"


def macrodata_frame(variates, transform: str):
    """The chosen macrodata columns as a DataFrame (growth rates in percent for level columns if asked)."""
    import statsmodels.api as sm

    frame = sm.datasets.macrodata.load_pandas().data
    frame.index = [f"{int(y)}Q{int(q)}" for y, q in zip(frame["year"], frame["quarter"])]
    frame = frame[list(variates)].astype(float)
    if transform == "growth":
        for column in variates:
            if column in MACRODATA_LEVELS:
                frame[column] = 100.0 * np.log(frame[column]).diff()
        frame = frame.iloc[1:]  # the first quarter has no growth rate
    return frame


def build_macrodata(config: MacrodataConfig, ctx=None) -> SeriesData:
    frame = macrodata_frame(config.variates, config.transform)
    return SeriesData(frame.to_numpy(), list(config.variates), config, name="macrodata", season=config.season, index=list(frame.index))


def build_sunspots(config: SunspotsConfig, ctx=None) -> SeriesData:
    import statsmodels.api as sm

    frame = sm.datasets.sunspots.load_pandas().data
    values = frame["SUNACTIVITY"].to_numpy(dtype=float)
    if config.transform == "sqrt":
        values = np.sqrt(values)
    return SeriesData(values[:, None], ["sunactivity"], config, name="sunspots", season=config.season, index=[int(y) for y in frame["YEAR"]])


def statsmodels_frame(dataset: str, columns=()):
    """Numeric columns of ``statsmodels.datasets.<dataset>`` (calendar columns dropped unless named)."""
    import importlib

    try:
        module = importlib.import_module(f"statsmodels.datasets.{dataset}")
    except ImportError as error:
        raise ValueError(f"statsmodels has no data set '{dataset}'") from error
    frame = module.load_pandas().data
    if columns:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"statsmodels data set '{dataset}' has no column(s) {', '.join(missing)} (columns: {', '.join(map(str, frame.columns))})")
        return frame[list(columns)].astype(float)
    numeric = frame.select_dtypes("number")
    keep = [c for c in numeric.columns if str(c).lower() not in _CALENDAR_COLUMNS]
    return numeric[keep].astype(float)


def build_statsmodels_series(config: StatsmodelsSeriesConfig, ctx=None) -> SeriesData:
    frame = statsmodels_frame(config.dataset, config.columns)
    if config.interpolate:
        frame = frame.interpolate(limit_direction="both")
    values = frame.to_numpy()
    if config.difference:
        values = np.diff(values, axis=0)
    if config.expected_variates is not None and values.shape[1] != config.expected_variates:
        raise ValueError(f"expected_variates is {config.expected_variates} but '{config.dataset}' gives {values.shape[1]} columns")
    return SeriesData(values, [str(c) for c in frame.columns], config, name=config.dataset, season=config.season)


def build_co2(config: Co2Config, ctx=None) -> SeriesData:
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"].interpolate(limit_direction="both")
    monthly = weekly.resample("MS").mean().interpolate(limit_direction="both")
    return SeriesData(monthly.to_numpy(), ["co2"], config, name="co2", season=config.season,
                      index=[f"{d.year}-{d.month:02d}" for d in monthly.index])


def build_elnino(config: ElninoConfig, ctx=None) -> SeriesData:
    import statsmodels.api as sm

    frame = sm.datasets.elnino.load_pandas().data
    months = [c for c in frame.columns if c != "YEAR"]
    values = frame[months].to_numpy(dtype=float).reshape(-1)  # year by year, January to December
    index = [f"{int(y)}-{m + 1:02d}" for y in frame["YEAR"] for m in range(12)]
    return SeriesData(values[:, None], ["temperature"], config, name="elnino", season=config.season, index=index)


def build_nile(config: NileConfig, ctx=None) -> SeriesData:
    import statsmodels.api as sm

    frame = sm.datasets.nile.load_pandas().data
    return SeriesData(frame["volume"].to_numpy(dtype=float)[:, None], ["volume"], config, name="nile", season=config.season,
                      index=[int(y) for y in frame["year"]])


def build_elec_equip(config: ElecEquipConfig, ctx=None) -> SeriesData:
    from statsmodels.datasets import elec_equip

    frame = elec_equip.load().data
    return SeriesData(frame.iloc[:, 0].to_numpy(dtype=float)[:, None], ["orders"], config, name="elec-equip", season=config.season,
                      index=[f"{d.year}-{d.month:02d}" for d in frame.index])


def build_danish_data(config: DanishDataConfig, ctx=None) -> SeriesData:
    from statsmodels.datasets import danish_data

    frame = danish_data.load().data
    return SeriesData(frame.to_numpy(dtype=float), [str(c) for c in frame.columns], config, name="danish-data", season=config.season,
                      index=[f"{d.year}Q{(d.month - 1) // 3 + 1}" for d in frame.index])
