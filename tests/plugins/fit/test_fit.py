"""FIT in causal mode: local layers attend only inside each group (block-diagonal) and information
crosses groups only through the latent tokens; the outputs of group g ignore every later group,
and the whole stack is exactly causal on embedded digits (zero Jacobian to later positions,
non-zero to earlier ones); the reshaped form equals the core's GroupLocalPattern masks; decoding
computes each group's latents once and equals recomputation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.plugins.fit import FitConfig
from genloom.plugins.fit.model import attention_entries
from genloom.testing import build, check_backbone, check_decoder, check_model_config, tiny_model
from genloom.toolkit.pixels import raster_ids
from genloom.toolkit.recurrent import greedy_matches_recomputation

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "fit.yaml"
NODE = {"name": "fit", "d_model": 16, "n_heads": 2, "group_size": 3, "n_latents": 2, "n_blocks": 2}
SMALL = ["backbone.d_model=16", "backbone.n_heads=2", "backbone.n_blocks=1"]


def backbone(**overrides):
    model, _ = build("backbone", {**NODE, **overrides})
    return model.double().eval()


def err(a, b):
    return (a - b).abs().max().item()


def influence(model, h):
    read = torch.randn(h.shape[-1], generator=torch.Generator().manual_seed(3), dtype=h.dtype)
    return torch.autograd.functional.jacobian(lambda x: model(x)[0] @ read, h)[:, 0].abs().sum(-1)  # (L out, L in)


@pytest.fixture(scope="module")
def digits_inputs():
    """An embedded 8x8 digit as the backbone sees it: a start token, then 63 pixels."""
    built = tiny_model(CONFIG, SMALL, seed=0, data=True)
    image = built.data.load("train", None, None)[0]["image"][None]
    ids = raster_ids(image, 17, built.ctx.get("image_start_id"))
    built.model.double().eval()
    with torch.no_grad():
        h = built.model.head.embed(ids[:, :-1])
    return built.model.backbone, h


def test_jacobian_is_causal_on_digits(digits_inputs):
    model, h = digits_inputs
    inf = influence(model, h)
    later = torch.ones_like(inf, dtype=torch.bool).triu(1)
    assert inf[later].max().item() == 0.0  # nothing later reaches an output
    assert inf[~later].min().item() > 1e-8  # every earlier pixel does: its own group directly, earlier groups via latents


def test_groups_ignore_later_groups_and_cross_only_through_latents(digits_inputs, monkeypatch):
    model, h = digits_inputs
    n = model.cfg.group_size
    with torch.no_grad():
        out = model(h)
        for g in range(7):
            moved = h.clone()
            moved[:, (g + 1) * n :] += torch.randn_like(moved[:, (g + 1) * n :])
            assert torch.equal(model(moved)[:, : (g + 1) * n], out[:, : (g + 1) * n])
    # cut the latent write: every output then depends on its own group only (block-diagonal Jacobian)
    monkeypatch.setattr(model, "_write", lambda block, x, z: x)
    inf = influence(model, h)
    group = torch.arange(h.shape[1]) // n
    assert inf[group[:, None] != group[None, :]].max().item() == 0.0
    assert inf[(group[:, None] == group[None, :]) & torch.ones_like(inf, dtype=torch.bool).tril()].min().item() > 1e-8


def test_broken_variants_leak_later_tokens(monkeypatch):
    """The paper's unshifted write (group g reads its own latents) and unmasked local layers both
    let an output see later positions of its own group."""
    model = backbone()
    h = torch.randn(1, 12, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    later = torch.ones(12, 12, dtype=torch.bool).triu(1)
    assert influence(model, h)[later].max().item() == 0.0

    def own_group_write(block, x, z):
        B, G, m, D = z.shape
        return x + block.write.update(x.reshape(B * G, -1, D), z.reshape(B * G, m, D)).reshape(x.shape)

    monkeypatch.setattr(model, "_write", own_group_write)
    assert influence(model, h)[later].max().item() > 1e-8
    monkeypatch.undo()
    from genloom.core.pattern import FULL

    monkeypatch.setattr(model, "_local", lambda layer, x, G: layer(x.reshape(x.shape[0] * G, -1, x.shape[-1]), pattern=FULL).view(x.shape))
    assert influence(model, h)[later].max().item() > 1e-8


@pytest.mark.parametrize("length", [1, 5, 9, 13])
def test_reshaped_form_equals_the_group_local_masks(length):
    model = backbone()
    h = torch.randn(2, length, 16, generator=torch.Generator().manual_seed(length), dtype=torch.float64)
    with torch.no_grad():
        reshaped = model(h)
        model.cfg.attention = "mask"
        assert err(model(h), reshaped) < 1e-12


@pytest.mark.parametrize("attention", ["reshape", "mask"])
def test_backbone_contract(attention):
    check_backbone({**NODE, "attention": attention}, length=11, chunks=(1, 3, 2, 5), tol=1e-10)


def test_latents_of_a_group_are_computed_once():
    model = backbone()
    calls = []
    full = model.full
    model.full = lambda x: calls.append(x.shape[1]) or full(x)
    h = torch.randn(1, 10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        expect = full(h)[0]
        state = model.init_state(1, 4)
        steps = torch.cat([model(h[:, t : t + 1], state=state) for t in range(10)], 1)
    assert err(steps, expect) < 1e-10
    assert calls == [3, 6, 9]  # when groups 1, 2, 3 begin


def test_attention_entries():
    got = attention_entries(64, 8, 2, 1, 1, 2)
    local = 8 * 8 * 9 // 2
    glob = sum(2 * (2 * (g + 1)) for g in range(8))  # latents of group g read 2 (g + 1) latents
    per_block = local + 8 * 2 * 8 + glob + 7 * 8 * 2
    assert got == {"fit": 2 * per_block, "full_causal": 2 * 2 * 64 * 65 // 2}


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_heads"):
        FitConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="max_length"):
        backbone(max_length=4)(torch.zeros(1, 5, 16, dtype=torch.float64))


def test_shipped_config_trains_and_decodes():
    torch.manual_seed(0)
    check_model_config(CONFIG, SMALL)
    built = tiny_model(CONFIG, SMALL, seed=0)
    built.model.double()
    start = built.ctx.get("image_start_id")
    greedy_matches_recomputation(built, [[start, 3, 16, 9, 0, 0, 1, 2, 5, 7], [start]], max_new_tokens=12)
    check_decoder(built, {"name": "sampling"}, prompts=((start, 1, 2), (start,)), max_new_tokens=5)
