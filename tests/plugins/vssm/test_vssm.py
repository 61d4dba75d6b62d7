"""VSSM: decoding sampled latents in one parallel pass equals step-by-step recurrent decoding (no
feedback of sampled outputs); resuming from the saved decoder state equals generating the whole
sequence at once; the ELBO trains encoder and decoder; the decoder runs on the core loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.vssm import VSSMDecoderConfig, VSSMObjectiveConfig
from genloom.testing import check_model_config, tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "vssm.yaml"
SMALL = ["backbone.d_model=16", "backbone.n_layers=2", "backbone.ssm_width=8", "backbone.state_size=4", "objective.latent_dim=4", "objective.encoder_modes=4"]


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    built = tiny_model(CONFIG, SMALL)
    built.model.double().eval()
    return built


def err(a, b):
    return (a - b).abs().max().item()


def latents(batch=2, length=14, seed=0):
    return torch.randn(batch, length, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_one_parallel_pass_equals_step_by_step_recurrent_decoding(built):
    model, objective = built.model, built.model.objective
    z = latents()
    with torch.no_grad():
        parallel = objective.decode(model, z)
        state = model.init_state(2)
        steps = torch.cat([objective.decode(model, z[:, t : t + 1], state=state) for t in range(14)], 1)
    assert err(parallel, steps) < 1e-10
    # the sampled tokens are a function of each position's own logits: nothing is fed back
    assert torch.equal(parallel.argmax(-1), steps.argmax(-1))


def test_resuming_from_the_saved_state_equals_regenerating_the_whole_sequence(built):
    model, objective = built.model, built.model.objective
    z = latents(length=20, seed=1)
    with torch.no_grad():
        whole = objective.decode(model, z)
        state = model.init_state(2)
        first = objective.decode(model, z[:, :8], state=state)
        saved = state.snapshot()
        second = objective.decode(model, z[:, 8:], state=state)
        assert err(torch.cat([first, second], 1), whole) < 1e-10
        state.restore(saved)
        assert err(objective.decode(model, z[:, 8:], state=state), whole[:, 8:]) < 1e-10
        # broken variant: resuming from a fresh state instead of the saved one
        assert err(objective.decode(model, z[:, 8:], state=model.init_state(2)), whole[:, 8:]) > 1e-3


def test_the_elbo_trains_encoder_and_decoder_and_kl_vanishes_at_the_prior(built):
    torch.manual_seed(0)
    fresh = tiny_model(CONFIG, SMALL)
    out = fresh.model.loss({"ids": torch.randint(0, 256, (2, 12))})
    out["loss"].backward()
    objective = fresh.model.objective
    for module in (objective.encoder, objective.to_posterior, objective.from_latent, fresh.model.backbone):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), type(module).__name__
    assert out["kl"] > 0 and torch.isfinite(out["loss"])
    with torch.no_grad():  # a posterior equal to the prior has KL 0: only the reconstruction is left
        objective.to_posterior.weight.zero_()
        objective.to_posterior.bias.zero_()
        assert fresh.model.loss({"ids": torch.randint(0, 256, (2, 12))})["kl"] == 0


def test_the_decoder_runs_on_the_core_loop_in_parallel_blocks(built):
    decoder = built.ctx.build("decoder", {"name": "vssm", "seed": 3})
    result = run(built.model, [[100, 101, 102, 103], [50, 51]], decoder, max_new_tokens=9, seed=0)
    assert [len(g) for g in result.ids] == [9, 9]
    assert result.metrics.forward_passes["target"] == 2  # the prompt, then one pass for all 9 tokens
    again = run(built.model, [[100, 101, 102, 103], [50, 51]], decoder, max_new_tokens=9, seed=0)
    assert again.ids == result.ids
    blocks = built.ctx.build("decoder", {"name": "vssm", "seed": 3, "block": 4})
    result = run(built.model, [[100, 101, 102, 103], [50, 51]], blocks, max_new_tokens=9, seed=0)
    assert result.metrics.forward_passes["target"] == 4 and [len(g) for g in result.ids] == [9, 9]


def test_shipped_config_and_config_errors():
    check_model_config(CONFIG, SMALL, batch={"ids": torch.randint(0, 256, (2, 17))})
    with pytest.raises(ValueError, match="latent_dim"):
        VSSMObjectiveConfig(latent_dim=0)
    with pytest.raises(ValueError, match="block"):
        VSSMDecoderConfig(block=0)
