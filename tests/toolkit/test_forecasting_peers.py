"""The neuralforecast peer adapter: it fits on the training part only and is scored by the harness's own code.

The splitting is checked without neuralforecast, through a fake backend that records every row it
is fitted on and predicted from; one test runs a tiny real neuralforecast twin and is skipped
when the ``compare`` extra is absent.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from genloom.toolkit import forecasting as fc
from genloom.toolkit import forecasting_peers as peers


class RecordingBackend:
    """Records the (T, V) arrays it is fitted on and predicted from; forecasts the last value of each variate."""

    def __init__(self, horizon: int):
        self.horizon = horizon
        self.fitted: list[np.ndarray] = []
        self.val_sizes: list[int] = []
        self.predicted_from: list[np.ndarray] = []

    def fit(self, frame, val_size):
        self.fitted.append(peers.frame_values(frame, "y", frame["unique_id"].nunique()))
        self.val_sizes.append(val_size)

    def predict(self, frame):
        history = peers.frame_values(frame, "y", frame["unique_id"].nunique())
        self.predicted_from.append(history)
        return np.repeat(history[-1:], self.horizon, axis=0)


@pytest.fixture
def timeline():
    rng = np.random.default_rng(0)
    # distinct levels per variate, so a variate mix-up changes the scores
    values = rng.normal(size=(60, 3)).cumsum(0) + np.array([0.0, 10.0, -5.0])
    return values, fc.rolling_origins(len(values), 4, 40, step=3)


def fitted_before(backend: RecordingBackend, values, cutoff: int) -> bool:
    """Every fit was on a prefix of the timeline that ends before ``cutoff``."""
    return all(len(part) <= cutoff and np.array_equal(part, values[:len(part)]) for part in backend.fitted)


class RefitOnLatest(peers.PeerForecaster):
    """Broken: refits at every origin on the latest history, so the model trains on earlier origins' test windows."""

    def training_part(self, history):
        return history[: len(history)]


def test_fit_once_sees_only_the_training_part_and_scores_like_the_harness(timeline):
    values, origins = timeline
    backend = RecordingBackend(4)
    peer = peers.PeerForecaster(backend, horizon=4, fit_length=40, val_size=5)
    table = fc.evaluate(values, {"peer": peer, "naive": fc.SeasonalNaive(4, 1)}, origins)
    assert peer.fits == [40] and backend.val_sizes == [5]
    assert np.array_equal(backend.fitted[0], values[:40]) and fitted_before(backend, values, origins[0].cutoff)
    # at each origin the peer forecasts from exactly the history before that cut-off
    assert [len(h) for h in backend.predicted_from] == [o.cutoff for o in origins]
    assert all(np.array_equal(h, values[:o.cutoff]) for h, o in zip(backend.predicted_from, origins))
    # the frames round-trip variates in order: last-value forecasts score exactly as seasonal naive (season 1)
    peer_row, naive_row = table.rows
    for metric in ("mse", "mae", "mase"):
        np.testing.assert_array_equal(peer_row.per_step[metric], naive_row.per_step[metric])


def test_refitting_on_test_windows_is_caught(timeline):
    values, origins = timeline
    backend = RecordingBackend(4)
    fc.evaluate(values, {"leaky": RefitOnLatest(backend, horizon=4, fit_length=40, val_size=5)}, origins)
    assert not fitted_before(backend, values, origins[0].cutoff)


def test_refit_every_origin_stays_before_each_cutoff(timeline):
    values, origins = timeline
    backend = RecordingBackend(4)
    fc.evaluate(values, {"peer": peers.PeerForecaster(backend, horizon=4, fit_length=None, val_size=0)}, origins)
    assert [len(part) for part in backend.fitted] == [o.cutoff for o in origins]
    assert all(np.array_equal(part, values[:o.cutoff]) for part, o in zip(backend.fitted, origins))


def test_fit_once_refuses_a_history_from_another_timeline_or_too_short(timeline):
    values, origins = timeline
    peer = peers.PeerForecaster(RecordingBackend(4), horizon=4, fit_length=40, val_size=5)
    with pytest.raises(ValueError, match="shorter than fit_length"):
        peer(values[:30])
    peer(values[:40])
    with pytest.raises(ValueError, match="expanding window"):
        peer(values[5:45])  # a sliding window: the fitted part is not its prefix
    with pytest.raises(ValueError, match="must exceed val_size"):
        peers.PeerForecaster(RecordingBackend(4), horizon=4, fit_length=5, val_size=5)


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "neuralforecast", None)
    with pytest.raises(ImportError, match=r"compare"):
        peers.require_neuralforecast()


@pytest.mark.slow  # imports neuralforecast and Lightning and runs three real training steps
def test_tiny_real_twin_fits_on_the_training_part():
    pytest.importorskip("neuralforecast")
    import logging
    import warnings

    from genloom.testing import tiny_model

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    built = tiny_model("configs/itransformer.yaml", data=True)
    data = built.data
    spec = peers.twin_spec(built.model, data, steps=3, lr=1e-3, eval_every=1)
    assert spec.model == "iTransformer"
    assert (spec.kwargs["hidden_size"], spec.kwargs["n_heads"], spec.kwargs["e_layers"], spec.kwargs["input_size"], spec.kwargs["h"]) == (32, 2, 1, 16, 4)
    peer = peers.peer_forecaster(spec, data, seed=0)
    values = data.values.double().numpy()
    origins = fc.rolling_origins(len(values), data.info["horizon"], data.info["borders"]["test"][0], step=20)
    table = fc.evaluate(values, {"peer": peer}, origins)
    assert peer.fits == [data.info["borders"]["test"][0]]
    assert peer.backend.best_validation_loss is not None  # validation ran and the best weights were restored
    assert np.isfinite(table.rows[0].overall()["mse"])
