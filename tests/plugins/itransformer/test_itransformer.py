"""iTransformer: one token per variate, attention across variates, equivariance to variate order."""

import pytest
import torch

from genloom.core.errors import ConfigError
from genloom.core.pattern import FULL
from genloom.testing import build, check_backbone, tiny_model


def _model(lookback=16, horizon=4, instance_norm=True, d_model=16, n_layers=2, backbone=None):
    return tiny_model(base={
        "tokenizer": {"name": "variate", "instance_norm": instance_norm},
        "head": {"name": "forecast", "lookback": lookback, "horizon": horizon},
        "backbone": backbone or {"name": "itransformer", "d_model": d_model, "n_layers": n_layers, "n_heads": 2, "dropout": 0.0},
        "objective": {"name": "mse"},
    }).model.eval()


@pytest.mark.parametrize("lookback", [4, 16, 48])
def test_token_count_is_the_number_of_variates_whatever_the_lookback(lookback):
    torch.manual_seed(0)
    model = _model(lookback=lookback)
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append((args[0].shape, out.shape)))
    x = torch.randn(3, lookback, 7)
    forecast = model.objective.predict(model, x)
    tokens, _ = model.tokenizer.encode(x)
    assert tokens.shape == (3, 7, lookback)  # V tokens of lookback features
    assert seen == [(torch.Size([3, 7, 16]), torch.Size([3, 7, 16]))]  # the encoder sees 7 tokens
    assert forecast.shape == (3, 4, 7)


@pytest.mark.parametrize("instance_norm", [True, False])
def test_permuting_variates_permutes_the_forecast(instance_norm):
    torch.manual_seed(0)
    model = _model(instance_norm=instance_norm).double()
    x = torch.randn(4, 16, 9, dtype=torch.float64) * 3 + 1
    perm = torch.randperm(9)
    assert not torch.equal(perm, torch.arange(9))
    with torch.no_grad():
        out = model.objective.predict(model, x)
        out_perm = model.objective.predict(model, x[:, :, perm])
    assert (out_perm - out[:, :, perm]).abs().max() < 1e-6
    # the forecast of one variate does depend on the others (attention mixes variate tokens)
    x2 = x.clone()
    x2[:, :, 1:] += torch.randn_like(x2[:, :, 1:])
    with torch.no_grad():
        out2 = model.objective.predict(model, x2)
    assert (out2[:, :, 0] - out[:, :, 0]).abs().max() > 1e-4


def test_positional_encoder_breaks_equivariance_so_the_check_can_fail():
    torch.manual_seed(0)
    rotary = _model(backbone={"name": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2, "rope": True}).double()
    x = torch.randn(4, 16, 9, dtype=torch.float64)
    perm = torch.randperm(9)
    with torch.no_grad():
        err = (rotary.objective.predict(rotary, x[:, :, perm]) - rotary.objective.predict(rotary, x)[:, :, perm]).abs().max()
    assert err > 1e-5  # ten times the 1e-6 bound the equivariance test uses


def test_variate_tokenizer_normalises_and_restores():
    tok, _ = build("tokenizer", {"name": "variate"})
    x = torch.randn(2, 10, 3, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64) + 5
    tokens, stats = tok.encode(x)
    assert tokens.shape == (2, 3, 10)
    assert tokens.mean(-1).abs().max() < 1e-9 and (tokens.std(-1, unbiased=False) - 1).abs().max() < 1e-3
    assert torch.allclose(tok.decode(tokens, stats), x, atol=1e-9)
    plain, none = build("tokenizer", {"name": "variate", "instance_norm": False})[0].encode(x)
    assert none is None and torch.equal(plain, x.transpose(1, 2))


def test_itransformer_backbone_conformance():
    check_backbone({"name": "itransformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, incremental=False, pattern=FULL, length=7)


def test_itransformer_serves_only_the_full_pattern():
    with pytest.raises(ConfigError, match="full"):
        tiny_model(base={"tokenizer": {"name": "variate"}, "head": {"name": "forecast", "lookback": 8, "horizon": 2},
                         "backbone": {"name": "itransformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
                         "objective": {"name": "mse", "pattern": "causal"}})
    with pytest.raises(ConfigError, match="n_heads"):
        tiny_model(base={"tokenizer": {"name": "variate"}, "head": {"name": "forecast", "lookback": 8, "horizon": 2},
                         "backbone": {"name": "itransformer", "d_model": 10, "n_heads": 4}, "objective": {"name": "mse"}})


def test_runnable_config_assembles_and_trains_a_batch():
    from pathlib import Path

    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "itransformer.yaml")
    assert built.data.info["modality"] == "series"
