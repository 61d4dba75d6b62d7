"""CAM noise augmentation: only the fed-back inputs are noised (targets clean, the level given as
conditioning); with max noise 0 the loss equals plain continuous AR training exactly; inference
feeds back each generated embedding plus a fixed small noise level."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import Generator
from genloom.plugins.cam_noise_aug import head as head_module
from genloom.plugins.cam_noise_aug.objective import noise_augmented_loss, plain_continuous_ar_loss
from genloom.testing import check_objective, tiny_model


def _tiny(max_noise=0.5, inference_noise=0.1):
    base = {
        "tokenizer": {"name": "ids", "vocab_size": 9, "eos_id": 0},
        "head": {"name": "cam", "latent_dim": 4, "diffusion_steps": 20, "head_width": 16},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "cam-noise-aug", "max_noise": max_noise},
        "decoder": {"name": "cam", "inference_noise": inference_noise, "diffusion_steps": 4},
    }
    b = tiny_model(base=base, seed=0)
    b.model.double()
    return b


IDS = torch.tensor([[1, 2, 3, 4, 5, 6], [8, 7, 6, 5, 4, 3]])


def equals_plain_training(model) -> bool:
    """noise_augmented_loss at max_noise 0 == plain continuous AR loss (same diffusion draws), to 1e-12."""
    augmented = noise_augmented_loss(model, IDS, 0.0, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))["loss"]
    plain = plain_continuous_ar_loss(model, IDS, torch.Generator().manual_seed(2))
    return abs(float(augmented.detach()) - float(plain.detach())) < 1e-12


def test_max_noise_zero_is_plain_continuous_ar_training(monkeypatch):
    b = _tiny()
    assert equals_plain_training(b.model)
    # and augmentation changes it
    noisy = noise_augmented_loss(b.model, IDS, 0.5, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))["loss"]
    assert abs(float(noisy.detach()) - float(plain_continuous_ar_loss(b.model, IDS, torch.Generator().manual_seed(2)).detach())) > 1e-6
    # a broken variant: a level embedding that is not zero at the clean level changes the model at sigma = 0
    monkeypatch.setattr(head_module.CamHead, "level_embedding", lambda self, sigma: self.level(torch.as_tensor(sigma, dtype=torch.float32)))
    assert not equals_plain_training(b.model)


def test_only_the_inputs_are_noised_and_the_level_is_conditioning(monkeypatch):
    b = _tiny(max_noise=0.5)
    head = b.model.head
    levels, seen_targets = [], []
    original_inputs, original_loss = head_module.CamHead.inputs, head_module.CamHead.diffusion_loss
    monkeypatch.setattr(head_module.CamHead, "inputs", lambda self, x, sigma: levels.append(torch.as_tensor(sigma).clone()) or original_inputs(self, x, sigma))
    monkeypatch.setattr(head_module.CamHead, "diffusion_loss", lambda self, h, target, generator=None: seen_targets.append(target) or original_loss(self, h, target, generator))
    out = noise_augmented_loss(b.model, IDS, 0.5, torch.Generator().manual_seed(0))
    x = head.vectors(IDS)
    assert torch.equal(seen_targets[0], x[:, 1:]) and torch.equal(out["_targets"], x[:, 1:])  # targets exactly clean
    sigma = levels[0]
    assert sigma.shape == (2, 5) and bool((sigma == sigma[:, :1]).all()) and bool((sigma > 0).all()) and bool((sigma <= 0.5).all())
    residual = out["_inputs"] - x[:, :-1]
    assert bool((residual.abs().sum(-1) > 0).all())
    # the residual has the level's scale: sigma * eps with the same draws
    g = torch.Generator().manual_seed(0)
    s = torch.rand((2, 1), generator=g, dtype=torch.float64) * 0.5
    eps = torch.randn(x[:, :-1].shape, generator=g, dtype=torch.float64)
    assert torch.allclose(residual, s[..., None] * eps, atol=1e-12)
    # the level reaches the backbone: the same noisy inputs read at another level give other inputs
    assert not torch.allclose(head.inputs(out["_inputs"], sigma), head.inputs(out["_inputs"], torch.zeros_like(sigma)))
    assert torch.equal(head.level_embedding(torch.zeros(3)), torch.zeros(3, 16, dtype=torch.float32))


@pytest.mark.parametrize("level", [0.0, 0.3])
def test_inference_feeds_back_the_sample_plus_a_fixed_noise_level(monkeypatch, level):
    b = _tiny(inference_noise=level)
    b.model.eval()
    fed, samples, read_levels = [], [], []
    original_sample, original_inputs = head_module.CamHead.sample_next, head_module.CamHead.inputs
    monkeypatch.setattr(head_module.CamHead, "sample_next", lambda self, h, steps, generator=None: samples.append(original_sample(self, h, steps, generator)) or samples[-1])
    monkeypatch.setattr(head_module.CamHead, "inputs", lambda self, x, sigma: fed.append(x[:, 0].clone()) or read_levels.append(sigma) or original_inputs(self, x, sigma))
    result = Generator(b).generate([[1, 2, 3], [4]], max_new_tokens=4, seed=0)
    assert result.metrics.forward_passes == {"target": 4, "diffusion-head": 16}  # prefill + 3 fed back; 4 x 4 head steps
    assert all(r == level for r in read_levels)
    for sample, back in zip(samples, fed):
        if level == 0:
            assert torch.equal(back, sample)
        else:
            diff = back - sample
            assert float(diff.abs().max()) > 0 and float(diff.std()) < 3 * level
    # the committed tokens are the samples' nearest embeddings
    nearest = [((s[:, None, :] - b.model.head.latents[None]) ** 2).sum(-1).argmin(-1) for s in samples]
    assert [list(r) for r in result.ids] == [[int(n[i]) for n in nearest][: len(result.ids[i])] for i in range(2)]


def test_objective_contract_and_bad_configs():
    b = _tiny()
    check_objective(b, {"ids": IDS})
    with pytest.raises(Exception, match="max_noise"):
        tiny_model(base={"tokenizer": {"name": "bytes"}, "head": {"name": "cam"}, "backbone": {"name": "transformer"}, "objective": {"name": "cam-noise-aug", "max_noise": -1.0}})
    with pytest.raises(Exception, match="'cam' head"):
        tiny_model(base={"tokenizer": {"name": "ids", "vocab_size": 9, "eos_id": 0}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
                         "objective": {"name": "cam-noise-aug"}}).model.loss({"ids": IDS})
