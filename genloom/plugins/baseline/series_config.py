"""Config of the embedded time-series data sets and of the shared forecasting parts (torch-free).

The data sets live in ``series.py``, the forecasting parts (``forecast`` head, ``mse`` objective,
seasonal-naive and least-squares baselines) in ``forecast.py``.

- ``macrodata``: statsmodels' US macroeconomic quarterly series 1959Q1-2009Q3 (203 quarters),
  multivariate. By default every column is used as published (``transform: levels``: trending,
  non-stationary series, as in the forecasting benchmarks iTransformer and S-Mamba report on);
  ``transform: growth`` turns the stock and price variables into quarterly growth rates in
  percent (100 * first difference of the logarithm; 202 quarters) and keeps the rates (interest
  rates, unemployment, inflation) as they are, so every variate is roughly stationary.
- ``sunspots``: statsmodels' yearly sunspot numbers 1700-2008 (309 years), univariate.
- ``statsmodels-series``: any numeric columns of any ``statsmodels.datasets`` module.

Every data set gives samples ``{"x": (lookback, V), "y": (horizon, V)}``. The timeline is split in
time order (by default 70 % train, 10 % validation, 20 % test); a window belongs to the split
that holds its whole forecast target ``y``; its lookback ``x`` may reach back into earlier splits.
A per-variate mean/std normaliser is fitted on the training part of the timeline only.
Binding publishes ``lookback``, ``horizon``, ``num_variates`` and ``season`` on the build context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from genloom.core.constraints import Fraction, Interval, PositiveInt

#: The macrodata columns that are levels of stocks or prices (growth rates make them stationary).
MACRODATA_LEVELS = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "pop")
#: The macrodata columns that already are rates (kept as they are).
MACRODATA_RATES = ("tbilrate", "unemp", "infl", "realint")
MACRODATA_COLUMNS = MACRODATA_LEVELS + MACRODATA_RATES


def _check_windows(lookback: int, horizon: int, val_fraction: float, test_fraction: float) -> None:
    if lookback < 1:
        raise ValueError(f"lookback must be at least 1, got {lookback}")
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if val_fraction + test_fraction >= 0.9:
        raise ValueError(f"val_fraction + test_fraction must leave at least 10 % of the timeline for training, got {val_fraction} + {test_fraction}")


@dataclass
class SeriesWindowConfig:
    """Fields every windowed series data set shares."""

    lookback: PositiveInt = 16
    """Past time steps each sample shows the model (x has this many rows)."""
    horizon: PositiveInt = 4
    """Future time steps each sample asks for (y has this many rows)."""
    val_fraction: Fraction = 0.1
    """Share of the timeline (after the training part) used for validation."""
    test_fraction: Fraction = 0.2
    """Share of the timeline at its end used for testing."""
    normalize: bool = True
    """Standardise each variate with the mean/std of the training part of the timeline."""
    stride: PositiveInt = 1
    """Step between the starts of consecutive windows."""
    batch_size: PositiveInt = 32
    """Training windows per batch."""
    eval_batch_size: PositiveInt | None = None
    """Windows per validation/test batch (None: batch_size)."""

    def __post_init__(self):
        _check_windows(self.lookback, self.horizon, self.val_fraction, self.test_fraction)
        if self.stride < 1:
            raise ValueError(f"stride must be at least 1, got {self.stride}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def bind(self, ctx) -> None:
        ctx.set("lookback", self.lookback)
        ctx.set("horizon", self.horizon)
        ctx.set("num_variates", self.num_variates())
        ctx.set("season", self.season_length())

    def num_variates(self) -> int:
        raise NotImplementedError

    def season_length(self) -> int:
        return 1


@dataclass
class MacrodataConfig(SeriesWindowConfig):
    """statsmodels' US macroeconomic quarterly data (multivariate)."""

    variates: list[str] = field(default_factory=lambda: list(MACRODATA_COLUMNS))
    """Columns to use, in this order (any of: realgdp realcons realinv realgovt realdpi cpi m1 tbilrate unemp pop infl realint)."""
    transform: Literal["levels", "growth"] = "levels"
    """'levels': every column as published; 'growth': 100 * diff(log) for the level columns (realgdp ... pop), rates kept."""
    season: PositiveInt = 4
    """Season length used by the seasonal-naive baseline (4 quarters)."""

    def __post_init__(self):
        super().__post_init__()
        unknown = [v for v in self.variates if v not in MACRODATA_COLUMNS]
        if unknown:
            raise ValueError(f"variates: unknown macrodata column(s) {', '.join(unknown)} (known: {', '.join(MACRODATA_COLUMNS)})")
        if not self.variates:
            raise ValueError("variates must name at least one column")
        if len(set(self.variates)) != len(self.variates):
            raise ValueError("variates must not repeat a column")
        if self.season < 1:
            raise ValueError(f"season must be at least 1, got {self.season}")

    def num_variates(self) -> int:
        return len(self.variates)

    def season_length(self) -> int:
        return self.season


@dataclass
class SunspotsConfig(SeriesWindowConfig):
    """statsmodels' yearly sunspot numbers 1700-2008 (univariate)."""

    lookback: PositiveInt = 32
    """Past years each sample shows the model."""
    horizon: PositiveInt = 8
    """Future years each sample asks for."""
    season: PositiveInt = 11
    """Season length used by the seasonal-naive baseline (the ~11-year solar cycle)."""
    transform: Literal["levels", "sqrt"] = "levels"
    """'levels': sunspot numbers as published; 'sqrt': their square root (a variance-stabilising transform)."""

    def num_variates(self) -> int:
        return 1

    def season_length(self) -> int:
        return self.season


@dataclass
class StatsmodelsSeriesConfig(SeriesWindowConfig):
    """Numeric columns of any ``statsmodels.datasets`` module as a (multivariate) series."""

    dataset: str = "nile"
    """Module name under statsmodels.datasets (e.g. nile, co2, sunspots, macrodata, danish_data)."""
    columns: list[str] = field(default_factory=list)
    """Columns to use (empty: every numeric column except calendar ones such as YEAR/year/quarter)."""
    difference: bool = False
    """Use first differences instead of levels."""
    interpolate: bool = True
    """Fill missing values by linear interpolation in time (co2 has gaps); False: missing values are an error."""
    season: PositiveInt = 1
    """Season length used by the seasonal-naive baseline."""
    expected_variates: PositiveInt | None = None
    """Number of variates, needed at bind time when columns is empty (None: read the data set to count them)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.dataset.isidentifier():
            raise ValueError(f"dataset must be a statsmodels.datasets module name, got '{self.dataset}'")

    def num_variates(self) -> int:
        if self.columns:
            return len(self.columns)
        if self.expected_variates is not None:
            return self.expected_variates
        from genloom.plugins.baseline.series import statsmodels_frame  # reads the embedded file, no download

        return statsmodels_frame(self.dataset, self.columns).shape[1]

    def season_length(self) -> int:
        return self.season


@dataclass
class NamedSeriesConfig(SeriesWindowConfig):
    """A statsmodels series with its natural season (fields shared by co2, elnino, nile, elec-equip, danish-data)."""

    season: PositiveInt = 12
    """Season length (the seasonal-naive and ETS baselines use it)."""

    def num_variates(self) -> int:
        return 1

    def season_length(self) -> int:
        return self.season


@dataclass
class MonthlySeriesConfig(NamedSeriesConfig):
    """A monthly statsmodels series: three years of history, one year ahead, season 12."""

    lookback: PositiveInt = 36
    """Past months each sample shows the model."""
    horizon: PositiveInt = 12
    """Future months each sample asks for."""


@dataclass
class Co2Config(MonthlySeriesConfig):
    """Mauna Loa atmospheric CO2 (ppm), weekly 1958-2001 averaged to 526 months (gaps interpolated); univariate, season 12."""


@dataclass
class ElninoConfig(MonthlySeriesConfig):
    """Monthly sea-surface temperature of the El Nino region, 1950-2010 (732 months); univariate, season 12."""


@dataclass
class NileConfig(NamedSeriesConfig):
    """Yearly flow volume of the Nile at Aswan, 1871-1970 (100 years); univariate, no season."""

    lookback: PositiveInt = 16
    """Past years each sample shows the model."""
    horizon: PositiveInt = 4
    """Future years each sample asks for."""
    season: PositiveInt = 1
    """No season (1: the seasonal-naive baseline repeats the last value)."""


@dataclass
class ElecEquipConfig(MonthlySeriesConfig):
    """Euro-area electrical equipment orders index, monthly 1995-2016 (257 months); univariate, season 12."""


@dataclass
class DanishDataConfig(NamedSeriesConfig):
    """Danish money demand data, quarterly 1974-1987 (55 quarters, 5 variates: lrm lry lpy ibo ide); season 4."""

    lookback: PositiveInt = 8
    """Past quarters each sample shows the model."""
    horizon: PositiveInt = 2
    """Future quarters each sample asks for."""
    season: PositiveInt = 4
    """Season length (4 quarters)."""
    test_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.25
    """Share of the timeline at its end used for testing (larger than usual: the series is short)."""

    def num_variates(self) -> int:
        return 5


@dataclass
class ForecastHeadConfig:
    """Linear forecasting head: a token's lookback series -> d_model (embed), hidden state -> horizon (output)."""

    d_model: PositiveInt | None = None
    """Hidden width (None: the backbone's d_model from the build context)."""
    lookback: PositiveInt | None = None
    """Features per input token (None: the tokenizer's ``token_features`` if it publishes them, else the data set's lookback)."""
    horizon: PositiveInt | None = None
    """Forecast values per token (None: the tokenizer's ``token_outputs`` if it publishes them, else the data set's horizon)."""
    bias: bool = True
    """Add a bias to the embedding and projection."""

    def __post_init__(self):
        for name in ("d_model", "lookback", "horizon"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    def bind(self, ctx) -> None:
        if self.d_model is None:
            self.d_model = ctx.d_model
        if self.lookback is None:
            self.lookback = ctx.get("token_features", None) or ctx.lookback
        if self.horizon is None:
            self.horizon = ctx.get("token_outputs", None) or ctx.horizon


@dataclass
class MseObjectiveConfig:
    """Mean squared error of the forecast against the target window (MAE reported beside it)."""

    pattern: Literal["full", "causal"] = "full"
    """Attention pattern over the tokens: variate tokens see each other ('full'); 'causal' for causal mixers."""
