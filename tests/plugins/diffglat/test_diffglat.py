"""DiffGLAT: glancing reveals ceil(ratio * Hamming distance) reference tokens; the modality process
masks at rate k/K by decoding step; decoding follows the process backwards."""

from __future__ import annotations

import math

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.diffglat.objective import glance
from genloom.testing import check_decoder, check_objective, tiny_model

CONFIG = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
          "objective": {"name": "diffglat", "steps": 4, "glance_ratio": 0.5}, "decoder": {"name": "diffglat"}}
M = 99


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return tiny_model(base=CONFIG)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_glancing_reveals_in_proportion_to_the_hamming_distance(ratio):
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randint(0, 50, (16, 12), generator=g)
    masked = torch.rand(16, 12, generator=g) < 0.7
    x_t = torch.where(masked, torch.full_like(x_0, M), x_0)
    prediction = torch.where(torch.rand(16, 12, generator=g) < 0.5, x_0, (x_0 + 1) % 50)
    glanced, still, d, n = glance(x_t, x_0, masked, prediction, ratio, generator=g)
    expect_d = (masked & (prediction != x_0)).sum(-1)
    assert torch.equal(d, expect_d)
    revealed = masked & ~still
    assert revealed.sum(-1).tolist() == [min(math.ceil(ratio * int(v)), int(m)) for v, m in zip(expect_d, masked.sum(-1))]
    assert torch.equal(glanced[revealed], x_0[revealed]) and bool((glanced[still] == M).all())
    assert torch.equal(glanced[~masked], x_0[~masked])


def test_broken_variant_fixed_count_glancing_is_caught():
    """Revealing a fixed number of tokens (not proportional to the errors) breaks the rule."""
    x_0 = torch.arange(10).repeat(2, 1)
    masked = torch.ones(2, 10, dtype=torch.bool)
    x_t = torch.full_like(x_0, M)
    perfect, poor = x_0.clone(), (x_0 + 1) % 10
    _, still_a, _, _ = glance(x_t, x_0, masked, torch.stack([perfect[0], poor[1]]), 0.5)
    assert (masked & ~still_a).sum(-1).tolist() == [0, 5]  # a correct prediction glances nothing


def test_modality_process_masks_at_rate_k_over_K(built):
    obj = built.model.objective
    x_0 = torch.randint(0, 200, (4000, 10), generator=torch.Generator().manual_seed(1))
    target = torch.ones_like(x_0, dtype=torch.bool)
    target[:, :3] = False
    for k in range(1, 5):
        x_t, masked = obj.corrupt(x_0, target, torch.full((4000,), k), torch.Generator().manual_seed(k))
        assert not bool(masked[:, :3].any())
        assert abs(float(masked[:, 3:].float().mean()) - k / 4) < 0.02
        assert torch.equal(x_t == built.ctx.mask_id, masked)


def test_training_and_decoding(built):
    ids = torch.randint(97, 123, (8, 12), generator=torch.Generator().manual_seed(2))
    prompt = torch.zeros_like(ids, dtype=torch.bool)
    prompt[:, :4] = True
    out = check_objective(built, {"ids": ids, "prompt_mask": prompt})
    assert float(out["glanced"]) <= float(out["hamming"])
    res = run(built.model, [[1, 2, 3], [4, 5]], built.ctx.build("decoder", {"name": "diffglat"}), max_new_tokens=8)
    assert res.metrics.forward_passes["target"] == 4  # K steps
    check_decoder(built, "diffglat")
    from genloom.plugins.diffglat import DiffGLATConfig
    with pytest.raises(ValueError, match="glance_ratio"):
        DiffGLATConfig(glance_ratio=1.5)
