"""Axial Transformer: the stack is exactly autoregressive in raster order (the Jacobian of the
output at position t is zero to every later input and non-zero to every earlier one, on embedded
digits), the reshaped O(N sqrt N) form equals the core's AxialPattern masks, semi-parallel
decoding equals recomputation, and the attention-entry count is the axial one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core.pattern import axial
from genloom.plugins.axial_transformer import AxialTransformerConfig
from genloom.plugins.axial_transformer.model import InnerLayer, attention_entries
from genloom.testing import build, check_backbone, check_decoder, check_model_config, tiny_model
from genloom.toolkit.pixels import raster_ids
from genloom.toolkit.recurrent import greedy_matches_recomputation

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "axial-transformer.yaml"
NODE = {"name": "axial-transformer", "d_model": 16, "n_heads": 2, "width": 4, "outer_layers": 1, "inner_layers": 2}
SMALL = ["backbone.d_model=16", "backbone.n_heads=2", "backbone.outer_layers=1", "backbone.inner_layers=1"]


def backbone(**overrides):
    model, _ = build("backbone", {**NODE, **overrides})
    return model.double().eval()


def err(a, b):
    return (a - b).abs().max().item()


def influence(model, h):
    """(L, L): |d out_t / d h_s| summed over features (a fixed random read-out of the output)."""
    read = torch.randn(h.shape[-1], generator=torch.Generator().manual_seed(3), dtype=h.dtype)
    jac = torch.autograd.functional.jacobian(lambda x: model(x)[0] @ read, h)  # (L, 1, L, D)
    return jac[:, 0].abs().sum(-1)


def raster_causality(model, h) -> tuple[float, float]:
    """(largest influence of a later input, smallest influence of an earlier-or-same input)."""
    inf = influence(model, h)
    later = torch.ones_like(inf, dtype=torch.bool).triu(1)
    return inf[later].max().item(), inf[~later].min().item()


@pytest.fixture(scope="module")
def digits_inputs():
    """Two embedded 8x8 digits as the backbone sees them: a start token, then 63 pixels."""
    built = tiny_model(CONFIG, SMALL, seed=0, data=True)
    images = built.data.load("train", None, None)
    batch = torch.stack([images[0]["image"], images[1]["image"]])
    ids = raster_ids(batch, 17, built.ctx.get("image_start_id"))
    built.model.double().eval()
    with torch.no_grad():
        h = built.model.head.embed(ids[:, :-1])
    return built, h


def test_jacobian_is_raster_causal_on_digits(digits_inputs):
    built, h = digits_inputs
    model = built.model.backbone
    assert model.width == 8  # published by the objective from the digits data set
    future, past = raster_causality(model, h[:1])
    assert future == 0.0  # exactly: no later pixel reaches an output
    assert past > 1e-8  # every earlier pixel (and the position itself) does, through rows above or the row


def test_broken_variants_leak_the_future(digits_inputs, monkeypatch):
    built, h = digits_inputs
    model = built.model.backbone
    # (1) the outer decoder without the shift down: a row's context reads its own row, later pixels included
    shifted = model.context
    monkeypatch.setattr(model, "context", lambda x: shifted(torch.cat([x[:, model.width:], x[:, -model.width:]], 1)))
    assert raster_causality(model, h[:1])[0] > 1e-6
    monkeypatch.undo()
    # (2) unmasked inner row attention
    monkeypatch.setattr(InnerLayer, "reshaped", lambda self, x: x + self.row.reshaped(self.row_norm(x), "row", causal=False))
    assert raster_causality(model, h[:1])[0] > 1e-6
    monkeypatch.undo()
    # (3) no outer decoder at all: causal, but blind to the rows above (the check of past influence can fail)
    monkeypatch.setattr(model, "context", lambda x: torch.zeros_like(x))
    assert raster_causality(model, h[:1])[1] == 0.0
    monkeypatch.undo()
    assert raster_causality(model, h[:1])[0] == 0.0


@pytest.mark.parametrize("length", [1, 7, 12, 13])
def test_reshaped_form_equals_the_axial_pattern_masks(length):
    model = backbone()
    h = torch.randn(2, length, 16, generator=torch.Generator().manual_seed(length), dtype=torch.float64)
    with torch.no_grad():
        reshaped = model(h)
        model.cfg.attention = "mask"
        masked = model(h)
    assert err(reshaped, masked) < 1e-12


@pytest.mark.parametrize("attention", ["reshape", "mask"])
def test_backbone_contract(attention):
    """The kit: full forward == token by token == uneven chunks, left padding, rollback, reorder."""
    check_backbone({**NODE, "attention": attention}, length=11, chunks=(1, 3, 2, 5), tol=1e-10)


def test_semi_parallel_decoding_runs_the_outer_stack_once_per_row():
    model = backbone()
    calls = []
    context = model.context
    model.context = lambda x: calls.append(x.shape[1]) or context(x)
    h = torch.randn(1, 12, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        full = model(h)
        state = model.init_state(1, 4)
        calls.clear()
        steps = torch.cat([model(h[:, t : t + 1], state=state) for t in range(12)], 1)
    assert err(steps, full) < 1e-10
    assert calls == [4, 8, 12]  # rows 0, 1, 2: once each, when the row's first token arrives


def test_attention_entries_are_axial():
    """8x8 digits, 2 outer + 2 inner layers: entries counted from the masks against full causal."""
    got = attention_entries(64, 8, 2, 2)
    rows = cols = 8
    outer = 64 * 8 + cols * rows * (rows + 1) // 2  # whole row + column up to the row
    inner = rows * 8 * 9 // 2  # row up to the pixel
    assert got == {"axial": 2 * outer + 2 * inner, "full_causal": 6 * 64 * 65 // 2}
    assert int(axial(8, "row", causal=False).dense(64).sum()) == 64 * 8


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_heads"):
        AxialTransformerConfig(d_model=10, n_heads=4)
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="width"):
        tiny_model(base={"tokenizer": {"name": "ids", "vocab_size": 5}, "head": {"name": "lm"},
                         "backbone": {"name": "axial-transformer", "d_model": 8, "n_heads": 2}, "objective": {"name": "next-token"}})
    model = backbone(max_rows=2)
    with pytest.raises(ValueError, match="max_rows"):
        model(torch.zeros(1, 9, 16, dtype=torch.float64))


def test_shipped_config_trains_and_decodes():
    torch.manual_seed(0)
    check_model_config(CONFIG, SMALL)  # a training step on two digits
    built = tiny_model(CONFIG, SMALL, seed=0)
    built.model.double()
    start = built.ctx.get("image_start_id")
    greedy_matches_recomputation(built, [[start, 3, 16, 9, 0, 0, 1, 2, 5, 7], [start]], max_new_tokens=12)
    check_decoder(built, {"name": "sampling"}, prompts=((start, 1, 2), (start,)), max_new_tokens=5)
