"""OLinear: the OrthoTrans basis is orthogonal, diagonalises the training windows' temporal
correlation and round-trips exactly; NormLin's weight rows are normalised."""

from pathlib import Path

import numpy as np
import torch

from genloom.plugins.olinear.model import NormLin
from genloom.plugins.olinear.tokenizer import OrthoTokenizer, orthogonal_basis, training_windows
from genloom.testing import tiny_model


def _series(n=300, v=3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return np.sin(2 * np.pi * t / 12 + rng.uniform(0, 6, v)) + 0.3 * rng.standard_normal((n, v)).cumsum(0) * 0.1 + 0.2 * rng.standard_normal((n, v))


def test_orthotrans_basis_is_orthogonal_and_diagonalises_the_temporal_correlation():
    windows = training_windows(_series(), 16)
    q, eigenvalues = orthogonal_basis(windows)
    assert np.abs(q.T @ q - np.eye(16)).max() < 1e-6
    assert np.all(np.diff(eigenvalues) <= 1e-12)  # decreasing
    correlation = np.corrcoef(windows, rowvar=False)
    rotated = q.T @ correlation @ q
    assert np.abs(rotated - np.diag(np.diag(rotated))).max() < 1e-8
    # the transformed (position-standardised) windows are decorrelated: their covariance is diagonal
    standardised = (windows - windows.mean(0)) / windows.std(0)
    covariance = np.cov(standardised @ q, rowvar=False)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 1e-8


def test_a_random_orthogonal_basis_round_trips_but_does_not_decorrelate():
    # the broken variant: orthogonal and invertible, yet not OrthoTrans -- the decorrelation check fails
    windows = training_windows(_series(), 16)
    random_q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((16, 16)))
    rotated = random_q.T @ np.corrcoef(windows, rowvar=False) @ random_q
    assert np.abs(random_q.T @ random_q - np.eye(16)).max() < 1e-6
    assert np.abs(rotated - np.diag(np.diag(rotated))).max() > 0.1


def test_the_tokenizer_round_trips_exactly_and_is_fitted_on_the_training_split_only():
    tok = OrthoTokenizer(16, 16, instance_norm=True)
    tok.fit_values(_series()[:200])
    x = torch.tensor(_series(seed=1)[:64], dtype=torch.float64).reshape(4, 16, 3)
    tokens, stats = tok.encode(x)
    assert tokens.shape == (4, 3, 16)
    q_out_is_q_in = OrthoTokenizer(16, 16)
    q_out_is_q_in.q_in = q_out_is_q_in.q_out = tok.q_in
    assert torch.allclose(q_out_is_q_in.decode(tokens, stats), x, atol=1e-10)  # Q Q^T = I undoes the transform
    # fit reads only the training split of a data set: changing the rest leaves Q unchanged
    from genloom.plugins.baseline.series import SeriesData
    from genloom.plugins.baseline.series_config import NileConfig

    values = _series(n=150, v=1)
    changed = values.copy()
    data = SeriesData(values, ["x"], NileConfig(), name="s", season=1)
    changed[data.borders["train"][1]:] *= 50
    a, b = OrthoTokenizer(16, 4), OrthoTokenizer(16, 4)
    a.fit(data)
    b.fit(SeriesData(changed, ["x"], NileConfig(), name="s", season=1))
    assert torch.equal(a.q_in, b.q_in) and torch.equal(a.q_out, b.q_out)


def test_normlin_rows_are_non_negative_and_sum_to_one():
    torch.manual_seed(0)
    for normalization in ("softplus", "softmax"):
        layer = NormLin(5, 8, normalization)
        with torch.no_grad():
            layer.weight.normal_(0, 3)
        w = layer.normalized_weight()
        assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(5))
        h = torch.randn(2, 5, 8)
        assert torch.allclose(layer(h), layer.projection(torch.einsum("ij,bjd->bid", w, h)))


def test_the_tokenizer_is_saved_and_loaded_with_a_run(tmp_path):
    tok = OrthoTokenizer(8, 4)
    tok.fit_values(_series()[:200])
    tok.save(tmp_path)
    other = OrthoTokenizer(8, 4)
    other.load(tmp_path)
    assert torch.equal(other.q_in, tok.q_in) and torch.equal(other.q_out, tok.q_out) and other.fitted


def test_runnable_config_assembles_and_trains_a_batch():
    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "olinear.yaml")
    tok = built.model.tokenizer
    assert tok.fitted and torch.allclose(tok.q_in.T @ tok.q_in, torch.eye(16, dtype=torch.float64), atol=1e-6)
