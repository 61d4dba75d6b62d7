"""A trained AR-Net (sparse, order = lookback) beats seasonal-naive and least-squares linear on sunspots' test split."""

import torch

from genloom.plugins.baseline.forecast import baseline_scores, evaluate, fit_forecaster, model_predictor
from genloom.testing import tiny_model

NODES = {
    "data": {"name": "sunspots", "lookback": 32, "horizon": 8},
    "tokenizer": {"name": "variate"},
    "head": {"name": "ar-net"},
    "backbone": {"name": "ar-net"},
    "objective": {"name": "ar-net", "sparsity": 0.1},
}


def test_trained_ar_net_beats_the_baselines_on_the_test_split():
    torch.manual_seed(0)
    built = tiny_model(base=NODES, data=True)
    fit_forecaster(built.model, built.data, steps=800, lr=3e-3, batch_size=64, eval_every=20, seed=0)
    model = evaluate(model_predictor(built.model), built.data, "test")
    for name, scores in baseline_scores(built.data).items():
        assert model["mse"] < scores["mse"], f"AR-Net test MSE {model['mse']:.3f} >= {name} {scores['mse']:.3f}"
        assert model["mae"] < scores["mae"], f"AR-Net test MAE {model['mae']:.3f} >= {name} {scores['mae']:.3f}"
    # the regulariser leaves most of the 32 x 8 coefficients near zero
    coefficients = built.model.head.coefficients().detach()
    assert (coefficients.abs() > 0.02).float().mean() < 0.5
