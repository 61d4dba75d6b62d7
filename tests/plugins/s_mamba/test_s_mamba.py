"""S-Mamba: variate tokens, and a bidirectional layer Mamba_f(x) + flip(Mamba_b(flip(x)))."""

import pytest
import torch

from genloom.core.errors import ConfigError
from genloom.core.pattern import CAUSAL, FULL
from genloom.plugins.s_mamba.model import BidirectionalMamba, SMambaLayer
from genloom.testing import build, check_backbone, tiny_model

SMALL = {"name": "s-mamba", "d_model": 8, "n_layers": 1, "dropout": 0.0, "mamba_options": {"d_state": 4, "d_conv": 2, "expand": 1}}


class CumulativeSum(torch.nn.Module):
    """A trivial causal stand-in for a Mamba block: token i sees tokens 0..i."""

    def forward(self, h, *, pattern=CAUSAL, state=None, valid=None):
        assert pattern.kind == "causal"
        return h.cumsum(dim=1)


def test_bidirectional_layer_with_a_causal_stand_in_sees_every_token():
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    out = BidirectionalMamba(CumulativeSum(), CumulativeSum())(x)
    # forward prefix sums + backward suffix sums = total + the token itself
    assert (out - (x.sum(1, keepdim=True) + x)).abs().max() < 1e-6


def _mixers():
    torch.manual_seed(0)
    node = {"name": "mamba", "d_model": 8, "n_layers": 1, "d_state": 4, "d_conv": 3, "expand": 2, "final_norm": False}
    forward_mixer = build("backbone", node, seed=0)[0].double().eval()
    backward_mixer = build("backbone", node, seed=1)[0].double().eval()
    return forward_mixer, backward_mixer


def test_bidirectional_layer_equals_the_formula_with_registry_mamba_blocks():
    forward_mixer, backward_mixer = _mixers()
    layer = BidirectionalMamba(forward_mixer, backward_mixer)
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        out = layer(x)
        expect = forward_mixer(x, pattern=CAUSAL) + torch.flip(backward_mixer(torch.flip(x, [1]), pattern=CAUSAL), [1])
        assert (out - expect).abs().max() < 1e-6
        # the two directions are causal in opposite directions: a change at token j moves the
        # forward part only at tokens >= j and the backward part only at tokens <= j
        j = 3
        x2 = x.clone()
        x2[:, j] += 1.0
        ahead = forward_mixer(x2, pattern=CAUSAL) - forward_mixer(x, pattern=CAUSAL)
        behind = torch.flip(backward_mixer(torch.flip(x2, [1]), pattern=CAUSAL) - backward_mixer(torch.flip(x, [1]), pattern=CAUSAL), [1])
        assert ahead[:, :j].abs().max() < 1e-12 and ahead[:, j:].abs().amax(dim=(0, 2)).min() > 1e-6
        assert behind[:, j + 1:].abs().max() < 1e-12 and behind[:, :j + 1].abs().amax(dim=(0, 2)).min() > 1e-6
        # so every output token of the layer depends on the changed token
        assert (layer(x2) - out).abs().amax(dim=(0, 2)).min() > 1e-6


def test_s_mamba_layer_is_the_paper_layout():
    forward_mixer, backward_mixer = _mixers()
    mixer = BidirectionalMamba(forward_mixer, backward_mixer)
    layer = SMambaLayer(mixer, 8, 16, dropout=0.0).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        u = layer.norm1(x + mixer(x))
        expect = layer.norm2(u + layer.ffn(u))
        assert (layer(x) - expect).abs().max() < 1e-12


@pytest.mark.parametrize("lookback", [6, 24])
def test_token_count_is_the_number_of_variates(lookback):
    torch.manual_seed(0)
    model = tiny_model(base={"tokenizer": {"name": "variate"}, "head": {"name": "forecast", "lookback": lookback, "horizon": 3},
                             "backbone": SMALL, "objective": {"name": "mse"}}).model.eval()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        forecast = model.objective.predict(model, torch.randn(2, lookback, 5))
    assert seen == [(2, 5, 8)] and forecast.shape == (2, 3, 5)
    # each layer holds a forward and a backward Mamba block of its own
    layer = model.backbone.layers[0]
    ahead, behind = list(layer.mixer.forward_mixer.parameters()), list(layer.mixer.backward_mixer.parameters())
    assert len(ahead) == len(behind) and not any(a is b for a, b in zip(ahead, behind))
    assert any(not torch.equal(a, b) for a, b in zip(ahead, behind))


def test_s_mamba_backbone_conformance_and_pattern():
    check_backbone(SMALL, incremental=False, pattern=FULL, length=6)
    with pytest.raises(ConfigError, match="full"):
        tiny_model(base={"tokenizer": {"name": "variate"}, "head": {"name": "forecast", "lookback": 8, "horizon": 2},
                         "backbone": SMALL, "objective": {"name": "mse", "pattern": "causal"}})
    with pytest.raises(ConfigError, match="mamba_options"):
        tiny_model(base={"tokenizer": {"name": "variate"}, "head": {"name": "forecast", "lookback": 8, "horizon": 2},
                         "backbone": {**SMALL, "mamba_options": {"n_layers": 2}}, "objective": {"name": "mse"}})


def test_runnable_config_assembles_and_trains_a_batch():
    from pathlib import Path

    from genloom.testing import check_model_config

    built = check_model_config(Path(__file__).resolve().parents[3] / "configs" / "s-mamba.yaml")
    assert built.data.info["modality"] == "series"
