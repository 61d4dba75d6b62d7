"""A tiny trained S-Mamba beats seasonal-naive and least-squares linear on macrodata's test split."""

import pytest
import torch

from genloom.plugins.baseline.forecast import baseline_scores, evaluate, fit_forecaster, model_predictor
from genloom.testing import tiny_model

NODES = {
    "data": {"name": "macrodata", "transform": "levels", "lookback": 16, "horizon": 4},
    "tokenizer": {"name": "variate"},
    "head": {"name": "forecast"},
    "backbone": {"name": "s-mamba", "d_model": 32, "n_layers": 1, "dropout": 0.1, "mamba_options": {"d_state": 16, "d_conv": 2, "expand": 1}},
    "objective": {"name": "mse"},
}


@pytest.mark.slow
def test_trained_s_mamba_beats_the_baselines_on_the_test_split():
    torch.manual_seed(0)
    built = tiny_model(base=NODES, data=True)
    fit_forecaster(built.model, built.data, steps=200, lr=1e-3, batch_size=32, eval_every=10, seed=0)
    model = evaluate(model_predictor(built.model), built.data, "test")
    for name, scores in baseline_scores(built.data).items():
        assert model["mse"] < scores["mse"], f"S-Mamba test MSE {model['mse']:.3f} >= {name} {scores['mse']:.3f}"
        assert model["mae"] < scores["mae"], f"S-Mamba test MAE {model['mae']:.3f} >= {name} {scores['mae']:.3f}"
