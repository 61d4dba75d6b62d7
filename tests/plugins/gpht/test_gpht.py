"""GPHT: one model forecasts any horizon by rolling out next patches (a 2P forecast equals two
chained P-step forecasts exactly), channels are independent (permuting them permutes the
forecast), every next-patch prediction is causal, and each stage reads the residual of the
earlier stages' predictions."""

from pathlib import Path

import pytest
import torch

from genloom.testing import tiny_model
from genloom.toolkit import forecasting_patches
from genloom.toolkit.forecasting_patches import NextPatchObjective

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "gpht.yaml"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = tiny_model(CONFIG, ["tokenizer.horizon=8", "backbone.d_model=16", "backbone.ffn_hidden=32"]).model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # far from the initialisation: every stage contributes
    return model


def _windows(batch=2, length=32, variates=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)[None, :, None]
    return torch.sin(t / 3 + torch.rand(batch, 1, variates, generator=g, dtype=torch.float64) * 6) * 5 + \
        torch.randn(batch, length, variates, generator=g, dtype=torch.float64) + 10


def _chained_gap(model, objective, x, P=4):
    with torch.no_grad():
        whole = objective.predict(model, x, horizon=2 * P)
        first = objective.predict(model, x, horizon=P)
        second = objective.predict(model, torch.cat([x, first], dim=1)[:, P:], horizon=P)
    return (whole - torch.cat([first, second], dim=1)).abs().max().item(), whole


def test_a_2p_forecast_equals_two_chained_p_step_forecasts(model):
    x = _windows()
    gap, whole = _chained_gap(model, model.objective, x)
    assert gap < 1e-12
    assert whole.shape == (2, 8, 3) and whole.std() > 0.1
    with torch.no_grad():  # any horizon from the same model: a shorter one is a prefix of the longer one
        assert torch.allclose(model.objective.predict(model, x, horizon=6), whole[:, :6], atol=1e-12)


class FrozenStatsRollout(NextPatchObjective):
    """Broken variant: normalises once by the first window and rolls out in that scale over a growing context."""

    def predict(self, model, x, horizon=None):
        tok = model.tokenizer
        tokens, stats = tok.encode(x)
        for _ in range(-(-horizon // tok.patch_len)):
            tokens = torch.cat([tokens, model(tokens)[:, -1:]], dim=1)
        return tok.decode(tokens[:, x.shape[1] // tok.patch_len:], stats, length=horizon)


def test_a_rollout_that_keeps_the_first_windows_statistics_breaks_the_chain(model):
    gap, _ = _chained_gap(model, FrozenStatsRollout(), _windows())
    assert gap > 1e-3


def _permutation_gap(model):
    x = _windows(variates=4, seed=1)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        return (model.objective.predict(model, x[..., perm], horizon=8) - model.objective.predict(model, x, horizon=8)[..., perm]).abs().max().item()


def test_permuting_channels_permutes_the_forecast(model, monkeypatch):
    assert _permutation_gap(model) < 1e-6
    # broken variant: folding the variates into sequences without the transpose mixes them
    monkeypatch.setattr(forecasting_patches, "fold_channels", lambda x: x.reshape(-1, x.shape[1]))
    assert _permutation_gap(model) > 1e-3


def _causal_leak(model):
    patches = torch.randn(3, 10, 4, dtype=torch.float64)
    with torch.no_grad():
        out = model.backbone(patches)
        leaks = []
        for t in range(9):
            changed = patches.clone()
            changed[:, t + 1:] += 5.0
            leaks.append((model.backbone(changed)[:, :t + 1] - out[:, :t + 1]).abs().max().item())
    return max(leaks)


def test_each_next_patch_prediction_reads_only_earlier_patches(model, monkeypatch):
    assert _causal_leak(model) == 0.0
    # broken variant: stage attention without the causal mask sees later blocks
    from genloom.plugins.gpht import model as gpht_model

    monkeypatch.setattr(gpht_model, "causal_mask", lambda n, device=None: torch.zeros(n, n, dtype=torch.bool, device=device))
    assert _causal_leak(model) > 1e-3


def test_each_stage_reads_the_residual_of_the_earlier_stages(model):
    patches = torch.randn(2, 10, 4, dtype=torch.float64)
    seen = []
    handle = model.backbone.stages[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            first, second = model.backbone.stage_predictions(patches)
            out = model.backbone(patches)
    finally:
        handle.remove()
    assert torch.allclose(seen[0], patches - first[:, :-1], atol=1e-12)
    assert torch.allclose(out, (first + second)[:, 1:], atol=1e-12)
    assert first[:, 1:].abs().max() > 1e-3 and second[:, 1:].abs().max() > 1e-3


def test_runnable_config_assembles_and_trains_a_batch():
    from genloom.testing import check_model_config

    built = check_model_config(CONFIG)
    assert isinstance(built.model.objective, NextPatchObjective)
    x, y = built.data.load("test").tensors()
    with torch.no_grad():
        assert built.model.objective.predict(built.model, x[:3]).shape == y[:3].shape
