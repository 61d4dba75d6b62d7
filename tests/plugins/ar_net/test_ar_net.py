"""AR-Net: the single linear layer learns the least-squares AR coefficients; the sparsity
regulariser shrinks the coefficients of lags beyond the true order."""

import math

import numpy as np
import pytest
import torch

from genloom.core.pattern import FULL
from genloom.plugins.ar_net import ArNetObjectiveConfig
from genloom.plugins.ar_net.objective import regularization_strength, sparsity_regularizer
from genloom.testing import check_backbone, tiny_model

TRUE = np.array([0.6, -0.3, 0.2])  # AR(3) coefficients of lags 1, 2, 3


def ar_series(seed: int = 0, n: int = 2000, intercept: float = 0.5) -> np.ndarray:
    rng = np.random.RandomState(seed)
    y = np.zeros(n + 100)
    for t in range(3, n + 100):
        y[t] = intercept + TRUE @ y[t - 3:t][::-1] + rng.randn()
    return y[100:]


def lag_windows(y: np.ndarray, order: int):
    """Every window of ``order`` values and the value after it (exactly AutoReg's rows)."""
    t = torch.tensor(y, dtype=torch.float32)
    index = torch.arange(order)[None] + torch.arange(len(y) - order)[:, None]
    return t[index][..., None], t[order:][:, None, None]


def ar_net(order: int, **objective):
    return tiny_model(base={
        "tokenizer": {"name": "variate", "instance_norm": False},
        "head": {"name": "ar-net", "lookback": order, "horizon": 1},
        "backbone": {"name": "ar-net"},
        "objective": {"name": "ar-net", **objective},
    }).model


def train(model, x, y, *, steps: int, lr: float):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):  # full batch: the objective is the least-squares problem itself
        out = model.loss({"x": x, "y": y})
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        schedule.step()
    return model


def test_single_layer_learns_the_autoreg_least_squares_coefficients():
    from statsmodels.tsa.ar_model import AutoReg

    torch.manual_seed(0)
    y = ar_series(seed=0)
    reference = AutoReg(y, lags=3, trend="c").fit().params  # const, lag 1, lag 2, lag 3
    model = train(ar_net(3), *lag_windows(y, 3), steps=400, lr=0.05)
    coefficients = model.head.coefficients()[0].detach().double().numpy()
    intercept = float(model.head.ar_layer.bias.detach())
    assert np.abs(coefficients - reference[1:]).max() < 1e-2, (coefficients, reference)
    assert abs(intercept - reference[0]) < 1e-2
    assert np.abs(coefficients - TRUE).max() < 0.06  # and AutoReg itself is close to the truth


def test_regulariser_is_the_papers_formula():
    w = torch.tensor([0.0, 0.5, -0.5, 8.0], dtype=torch.float64, requires_grad=True)
    value = sparsity_regularizer(w, c1=3.0, c2=3.0)
    each = [2.0 / (1.0 + math.exp(-3.0 * abs(v) ** (1.0 / 3.0))) - 1.0 for v in (1e-12, 0.5, -0.5, 8.0)]
    assert abs(float(value.detach()) - sum(each) / 4) < 1e-9
    value.backward()
    assert torch.isfinite(w.grad).all() and w.grad[0] == 0  # the cusp at 0 gives no NaN
    assert w.grad[1] > 0 and w.grad[2] < 0 and w.grad[1] > 10 * w.grad[3]  # steep near 0, flat for large |w|
    assert regularization_strength(0.25, c_lambda=0.1) == pytest.approx(0.3)
    assert ArNetObjectiveConfig(sparsity=0.25, c_lambda=0.1).lam == pytest.approx(0.3)
    assert ArNetObjectiveConfig(sparsity=0.25, strength=0.7).lam == 0.7 and ArNetObjectiveConfig().lam == 0.0
    with pytest.raises(ValueError, match="sparsity"):
        ArNetObjectiveConfig(sparsity=0.0)


def test_regulariser_schedule_delays_then_ramps():
    model = ar_net(4, strength=0.4, delay_steps=3, ramp_steps=4)
    x, y = lag_windows(ar_series(n=200), 4)
    lambdas = []
    for _ in range(9):
        out = model.loss({"x": x, "y": y})
        lambdas.append(float(out["lambda"]))
    assert lambdas == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    model.eval()
    model.loss({"x": x, "y": y})
    assert int(model.objective.steps_seen) == 9  # evaluation does not advance the schedule
    reg = float(out["regularizer"])
    assert abs(out["loss"].item() - (float(out["mse"]) + 0.4 * reg)) < 1e-6


def test_sparsity_regulariser_shrinks_lags_beyond_the_true_order():
    from statsmodels.tsa.ar_model import AutoReg

    y = ar_series(seed=0)
    y = (y - y.mean()) / y.std()
    ols = AutoReg(y, lags=12, trend="c").fit().params[1:]
    x, target = lag_windows(y, 12)
    torch.manual_seed(0)
    model = train(ar_net(12, strength=0.4, delay_steps=600, ramp_steps=600), x, target, steps=2000, lr=0.002)
    sparse = model.head.coefficients()[0].detach().double().numpy()
    # (without the regulariser AR-Net lands on least squares: test_single_layer_learns_the_autoreg_...)
    extra_ols, extra_sparse = np.abs(ols[3:]), np.abs(sparse[3:])
    assert extra_ols.max() > 0.02  # least squares spreads noise over the 9 superfluous lags ...
    assert extra_sparse.max() < 0.02 and extra_sparse.mean() < 0.3 * extra_ols.mean()  # ... the regulariser removes it
    assert np.abs(sparse[:3] - TRUE).max() < 0.08  # while keeping the true lags


def test_deep_ar_net_shapes_and_backbone_conformance():
    built = tiny_model(base={
        "tokenizer": {"name": "variate", "instance_norm": False},
        "head": {"name": "ar-net", "lookback": 10, "order": 6, "horizon": 3},
        "backbone": {"name": "ar-net", "hidden_layers": 2, "hidden_size": 8},
        "objective": {"name": "ar-net", "sparsity": 0.5},
    })
    model = built.model
    assert tuple(model.head.ar_layer.weight.shape) == (8, 6) and tuple(model.head.output.weight.shape) == (3, 8)
    out = model.loss({"x": torch.randn(5, 10, 2), "y": torch.randn(5, 3, 2)})
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.objective.predict(model, torch.randn(5, 10, 2)).shape == (5, 3, 2)
    check_backbone({"name": "ar-net", "hidden_layers": 2, "hidden_size": 8}, incremental=False, pattern=FULL)
    with pytest.raises(Exception, match="order"):
        tiny_model(base={"tokenizer": {"name": "variate"}, "head": {"name": "ar-net", "lookback": 4, "order": 6, "horizon": 1},
                         "backbone": {"name": "ar-net"}, "objective": {"name": "ar-net"}})


def test_runnable_config_assembles_and_trains_a_batch():
    from pathlib import Path

    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "ar-net.yaml")
    assert built.data.info["modality"] == "series"
