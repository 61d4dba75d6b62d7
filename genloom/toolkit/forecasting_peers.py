"""neuralforecast (Nixtla) models as forecasters of the harness: the peer side of the comparison tables.

``neuralforecast`` is an optional extra (``pip install -c constraints.txt -e ".[compare]"``); it is
imported only inside the functions that need it, and :func:`require_neuralforecast` names the extra
when it is missing.

The protocol is the one genloom's own forecasters follow in ``benchmarks/forecast_table.py``:

- **Fit once, on the training part.** :class:`PeerForecaster` with ``fit_length = n`` fits its model
  at its first call on the first ``n`` steps of the history it is given (``n`` = the start of the
  data set's test split, so the training and validation splits of the genloom data set), the last
  ``val_size`` of them held out for validation (neuralforecast's ``val_size``: training windows end
  before them, validation windows have their whole target inside them, as genloom's ``val`` split).
  The weights of the best validation loss are kept (:class:`BestValidationWeights`), as
  ``fit_forecaster`` keeps genloom's. At every origin it then forecasts the ``horizon`` steps after
  the history from its last ``input_size`` steps. Every later history must start with the same
  ``n`` steps (an expanding window over one timeline); anything else is an error, so a refit on
  test data cannot happen silently. ``fit_length = None`` refits at every origin on the whole
  history instead (the baselines' protocol).
- **Same scale.** The harness's values are already standardised by statistics of the training part;
  neuralforecast's ``local_scaler_type`` stays ``None`` (it would refit statistics on whatever frame
  it is given). Per-window normalisation is the model's own (``scaler_type`` / ``use_norm``), chosen
  to match the genloom twin: see :func:`twin_spec`.
- **Same metrics.** The peer returns the harness's :class:`~genloom.toolkit.forecasting.Forecast`, so
  :func:`genloom.toolkit.forecasting.evaluate` scores it with exactly the code that scores genloom.

The model behind a :class:`PeerForecaster` is a *backend* with two methods, ``fit(frame, val_size)``
and ``predict(frame) -> (horizon, V)`` over long frames (``unique_id``, ``ds``, ``y``);
:class:`NeuralForecastBackend` drives ``neuralforecast.NeuralForecast``. Tests substitute a
backend that records the rows it was given.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from genloom.toolkit.forecasting import Forecast

EXTRA_HINT = 'pip install -c constraints.txt -e ".[compare]"'


def require_neuralforecast():
    """Import ``neuralforecast`` or raise an ImportError that names the ``compare`` extra."""
    try:
        import neuralforecast
    except ImportError as error:
        raise ImportError(f"the neuralforecast peers need the optional 'compare' extra: {EXTRA_HINT}") from error
    return neuralforecast


# ---------------------------------------------------------------------------------------------
# Frames: the (T, V) arrays of the harness as neuralforecast's long format
# ---------------------------------------------------------------------------------------------

def variate_ids(count: int) -> list[str]:
    """``unique_id`` of variate v: ``v000``, ``v001``, ... (sorting keeps the variate order)."""
    return [f"v{v:03d}" for v in range(count)]


def series_frame(values: np.ndarray):
    """Long frame of a (T, V) array: one ``unique_id`` per variate, ``ds`` the integer step 0..T-1."""
    import pandas as pd

    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    steps, count = values.shape
    return pd.DataFrame({"unique_id": np.repeat(variate_ids(count), steps), "ds": np.tile(np.arange(steps), count),
                         "y": values.T.reshape(-1)})


def frame_values(frame, column: str, count: int) -> np.ndarray:
    """(steps, V) array of ``column`` from a long frame, variates in :func:`variate_ids` order, ``ds`` ascending."""
    ids = variate_ids(count)
    ordered = frame.sort_values(["unique_id", "ds"])
    return np.stack([ordered.loc[ordered["unique_id"] == i, column].to_numpy(dtype=np.float64) for i in ids], axis=1)


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------

class PeerForecaster:
    """``history (t, V) -> Forecast`` through a peer backend, fitted on the training part only.

    ``fit_length``: fit once, at the first call, on ``history[:fit_length]`` (the training part; it
    must not reach past the first cut-off) and reuse the model at every origin; ``None``: refit at
    every origin on the whole history. ``val_size``: steps at the end of the fitted part held out
    for validation (0: none). ``fits`` records the length of each fit.
    """

    def __init__(self, backend, *, horizon: int, fit_length: int | None, val_size: int = 0):
        if fit_length is not None and fit_length <= val_size:
            raise ValueError(f"fit_length ({fit_length}) must exceed val_size ({val_size})")
        self.backend, self.horizon, self.fit_length, self.val_size = backend, horizon, fit_length, val_size
        self.fits: list[int] = []
        self._fitted_part: np.ndarray | None = None

    def training_part(self, history: np.ndarray) -> np.ndarray | None:
        """The steps to fit on at this call, or None to reuse the fitted model."""
        if self.fit_length is None:
            return history
        if self._fitted_part is None:
            if len(history) < self.fit_length:
                raise ValueError(f"the first history ({len(history)} steps) is shorter than fit_length ({self.fit_length}): "
                                 "the training part must end at or before the first cut-off")
            return history[: self.fit_length]
        if len(history) < self.fit_length or not np.array_equal(history[: self.fit_length], self._fitted_part):
            raise ValueError("this history does not start with the training part the peer was fitted on; "
                             "a fit-once peer needs an expanding window over one timeline")
        return None

    def __call__(self, history: np.ndarray) -> Forecast:
        history = np.asarray(history, dtype=np.float64)
        part = self.training_part(history)
        if part is not None:
            self.backend.fit(series_frame(part), self.val_size)
            self.fits.append(len(part))
            self._fitted_part = part.copy()
        mean = np.asarray(self.backend.predict(series_frame(history)), dtype=np.float64)
        if mean.shape != (self.horizon, history.shape[1]):
            raise ValueError(f"the peer returned a forecast of shape {mean.shape}, expected {(self.horizon, history.shape[1])}")
        return Forecast(mean)


class BestValidationWeights:
    """Keeps the weights of the lowest validation loss on the module (``best_validation``), to be restored after fit.

    Lightning callback protocol (``on_validation_end``); stored on the module because neuralforecast
    copies the callbacks it is given.
    """

    def __init__(self, monitor: str = "ptl/val_loss"):
        self.monitor = monitor

    def on_validation_end(self, trainer, module):
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or getattr(trainer, "sanity_checking", False):
            return
        best = getattr(module, "best_validation", None)
        if best is None or float(value) < best[0]:
            module.best_validation = (float(value), copy.deepcopy(module.state_dict()))


def _lightning_callback(callback: BestValidationWeights):
    import pytorch_lightning as pl

    class _Callback(pl.Callback):
        def on_validation_end(self, trainer, module):
            callback.on_validation_end(trainer, module)

    return _Callback()


class NeuralForecastBackend:
    """Fits and predicts one neuralforecast model (``make_model()`` builds it fresh for every fit)."""

    def __init__(self, make_model: Callable[[], Any], *, keep_best: bool = True):
        self.make_model, self.keep_best = make_model, keep_best
        self.engine = None
        self.best_validation_loss: float | None = None

    def fit(self, frame, val_size: int) -> None:
        require_neuralforecast()
        from neuralforecast import NeuralForecast

        model = self.make_model()
        if self.keep_best and val_size > 0:
            callbacks = list(model.trainer_kwargs.get("callbacks") or [])
            model.trainer_kwargs["callbacks"] = callbacks + [_lightning_callback(BestValidationWeights())]
        self.engine = NeuralForecast(models=[model], freq=1, local_scaler_type=None)
        self.engine.fit(frame, val_size=val_size)
        fitted = self.engine.models[0]
        best = getattr(fitted, "best_validation", None)
        if best is not None:
            self.best_validation_loss = best[0]
            fitted.load_state_dict(best[1])
            del fitted.best_validation

    def predict(self, frame) -> np.ndarray:
        if self.engine is None:
            raise RuntimeError("predict before fit")
        forecast = self.engine.predict(df=frame)
        column = [c for c in forecast.columns if c not in ("unique_id", "ds")][0]
        count = frame["unique_id"].nunique()
        return frame_values(forecast, column, count)


# ---------------------------------------------------------------------------------------------
# Twins: a genloom forecaster's hyper-parameters in neuralforecast's words
# ---------------------------------------------------------------------------------------------

#: genloom backbone -> neuralforecast model class with the same architecture.
TWINS = {"itransformer": "iTransformer", "autoformer": "Autoformer", "informer": "Informer"}


@dataclass
class TwinSpec:
    """A neuralforecast model class name and its keyword arguments, and what could not be matched."""

    model: str
    kwargs: dict
    differences: list[str] = field(default_factory=list)

    def build(self, *, seed: int, **overrides):
        """The neuralforecast model (fresh), seeded with ``seed``."""
        require_neuralforecast()
        import neuralforecast.models as models

        return getattr(models, self.model)(**{**self.kwargs, "random_seed": seed, **overrides})


def _swiglu_hidden(module) -> int | None:
    for name, sub in module.named_modules():
        if name.endswith("gate_proj"):
            return sub.out_features
    return None


def twin_spec(model, data, *, steps: int, lr: float, batch_size: int = 32, eval_every: int = 25) -> TwinSpec:
    """The neuralforecast twin of an assembled genloom forecaster trained with ``fit_forecaster``.

    The mapping (genloom -> neuralforecast): lookback -> ``input_size``; horizon -> ``h``; d_model ->
    ``hidden_size``; heads -> ``n_heads``/``n_head``; layers -> ``e_layers`` or ``encoder_layers`` /
    ``decoder_layers``; feed-forward width -> ``d_ff``/``conv_hidden_size``; dropout, moving average,
    factor, distil as they are; ``label_len / lookback`` -> ``decoder_input_size_multiplier``;
    per-window normalisation (``variate``/``time-step`` tokenizer ``instance_norm``) -> iTransformer's
    ``use_norm`` (scaler ``identity``), or ``scaler_type: standard`` (the input window's mean and
    population std, undone on the output, as the ``time-step`` tokenizer does); MSE loss; AdamW (no
    weight decay) with the learning rate decayed to 0 by a cosine over ``steps`` (``fit_forecaster``'s
    schedule); ``windows_batch_size = batch_size`` windows a step; validation every ``eval_every``
    steps with the best weights kept.
    """
    import torch

    components = model.config.components
    backbone = components["backbone"]
    name = backbone.record.name
    if name not in TWINS:
        raise ValueError(f"backbone '{name}' has no neuralforecast twin (twins: {', '.join(TWINS)})")
    cfg = backbone.config
    tokenizer = components["tokenizer"].config
    info = data.info
    lookback, horizon = info["lookback"], info["horizon"]
    instance_norm = bool(getattr(tokenizer, "instance_norm", False))
    common = dict(h=horizon, input_size=lookback, loss=_mse(), valid_loss=_mse(), max_steps=steps, learning_rate=lr,
                  val_check_steps=eval_every, batch_size=batch_size, windows_batch_size=batch_size,
                  inference_windows_batch_size=1024, optimizer=torch.optim.AdamW, optimizer_kwargs={"weight_decay": 0.0},
                  lr_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR, lr_scheduler_kwargs={"T_max": steps},
                  enable_progress_bar=False, enable_model_summary=False, logger=False, accelerator="cpu", devices=1)
    differences = []
    if name == "itransformer":
        hidden = cfg.ffn_hidden or _swiglu_hidden(model.backbone)
        kwargs = dict(n_series=info["num_variates"], hidden_size=cfg.d_model, n_heads=cfg.n_heads, e_layers=cfg.n_layers,
                      d_ff=hidden, dropout=cfg.dropout, use_norm=instance_norm, scaler_type="identity")
        differences.append(f"feed-forward: genloom SwiGLU with hidden {hidden} (3 matrices), neuralforecast GELU MLP with d_ff {hidden} (2)")
        differences.append("encoder layer: genloom pre-norm RMSNorm, neuralforecast post-norm LayerNorm (the paper's)")
    else:
        label_len = getattr(model.backbone, "label_len", lookback // 2)
        kwargs = dict(hidden_size=cfg.d_model, n_head=cfg.n_heads, encoder_layers=cfg.encoder_layers,
                      decoder_layers=cfg.decoder_layers, conv_hidden_size=cfg.ffn_hidden, dropout=cfg.dropout,
                      factor=max(1, int(round(cfg.factor))), decoder_input_size_multiplier=label_len / lookback,
                      scaler_type="standard" if instance_norm else "identity")
        if cfg.factor != int(round(cfg.factor)):
            differences.append(f"factor {cfg.factor} rounded to {int(round(cfg.factor))} (neuralforecast takes an integer)")
        if name == "autoformer":
            kwargs["MovingAvg_window"] = cfg.moving_average
        else:
            kwargs["distil"] = cfg.distil
        if name == "autoformer":
            differences.append("value embedding: genloom the head's linear map then a kernel-3 circular convolution in the model width, "
                               "neuralforecast one kernel-3 convolution (the paper's)")
            differences.append("trend: genloom accumulates it in the model width (per-layer kernel-3 convolutions, then the head's "
                               "output layer); neuralforecast adds the raw input's trend and projects each layer's trend to the output")
        else:
            differences.append("value embedding: genloom linear, neuralforecast kernel-3 convolution (the paper's)")
    return TwinSpec(TWINS[name], {**common, **kwargs}, differences)


def _mse():
    require_neuralforecast()
    from neuralforecast.losses.pytorch import MSE

    return MSE()


def peer_forecaster(spec: TwinSpec, data, *, seed: int) -> PeerForecaster:
    """A fit-once :class:`PeerForecaster` of ``spec`` on ``data``'s training and validation splits (seeded)."""
    borders = data.info["borders"]
    fit_length = borders["test"][0]
    val_size = borders["val"][1] - borders["val"][0]
    backend = NeuralForecastBackend(lambda: spec.build(seed=seed))
    return PeerForecaster(backend, horizon=data.info["horizon"], fit_length=fit_length, val_size=val_size)
