"""GPD (package genloom.plugins.gpd_ts): an unconditionally trained diffusion model forecasts by overwriting the history at every
reverse step; the sample's history part is the given history exactly and any horizon works."""

import math
from pathlib import Path

import torch

from genloom.testing import tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "gpd-ts.yaml"


def _model(window=16, stride=4, steps=20):
    return tiny_model(base={
        "tokenizer": {"name": "time-step", "horizon": 1, "instance_norm": False},
        "head": {"name": "gpd-ts", "window": window},
        "backbone": {"name": "gpd-mlp", "d_model": 32, "n_layers": 2},
        "objective": {"name": "gpd-ts", "steps": steps, "stride": stride, "num_samples": 4, "horizon": 6},
    }).model


def test_imputation_returns_the_known_part_exactly():
    torch.manual_seed(0)
    model = _model().double().eval()
    known = torch.randn(5, 16, dtype=torch.float64)
    mask = torch.cat([torch.ones(12), torch.zeros(4)]).double()
    filled = model.objective.impute(model, known * mask, mask, torch.Generator().manual_seed(0))
    assert torch.equal(filled[:, :12], known[:, :12])
    assert (filled[:, 12:] - known[:, 12:]).abs().min() > 0  # the unknown part is generated, not copied
    # the broken variant: sampling without overwriting (an all-zero mask) does not reproduce the history
    free = model.objective.impute(model, known * mask, torch.zeros(16, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert (free[:, :12] - known[:, :12]).abs().max() > 0.1


def test_any_horizon_by_rounds_and_the_history_is_untouched():
    torch.manual_seed(0)
    model = _model().double().eval()
    x = torch.randn(2, 16, 3, dtype=torch.float64)
    for horizon in (1, 4, 11, 37):  # 37 > twice the window: 10 rounds of 4
        paths = model.objective.forecast(model, x, horizon, num_samples=3, generator=torch.Generator().manual_seed(0))
        assert paths.shape == (3, 2, horizon, 3) and torch.isfinite(paths).all()
    assert model.objective.predict(model, x.float()).shape == (2, 6, 3)


def test_conditioning_on_the_history_beats_unconditional_samples_after_training():
    torch.manual_seed(0)
    model = _model(window=16, stride=4, steps=30)
    t = torch.arange(400, dtype=torch.float32)
    series = torch.sin(2 * math.pi * t / 8)
    windows = torch.stack([series[s:s + 16] for s in range(0, 380)])[..., None]  # (N, 16, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        index = torch.randint(0, len(windows), (64,), generator=generator)
        loss = model.loss({"x": windows[index]})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    history = torch.sin(2 * math.pi * (torch.arange(16) + 3.0) / 8)[None, :, None]
    truth = torch.sin(2 * math.pi * (torch.arange(16, 20) + 3.0) / 8)
    conditioned = model.objective.forecast(model, history, 4, num_samples=16, generator=torch.Generator().manual_seed(1)).mean(0)[0, :, 0]
    mask = torch.zeros(16)
    free = model.objective.impute(model, torch.zeros(16, 16), mask, torch.Generator().manual_seed(1))[:, 12:].mean(0)
    assert ((conditioned - truth) ** 2).mean() < 0.25 * ((free - truth) ** 2).mean()


def test_runnable_config_assembles_and_trains_a_batch():
    from genloom.testing import check_model_config

    built = check_model_config(CONFIG)
    assert built.model.head.window == 24
