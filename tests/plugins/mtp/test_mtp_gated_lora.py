"""Gated LoRA: ordinary positions equal the base model bit-for-bit, whatever the adapter weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtp_toy
from genloom.plugins.mtp.lora import GateContext, GatedLoRALinear, add_gated_lora, lora_parameters
from genloom.plugins.mtp.objective import MaskBlocksPattern, build_rows, spaced_cuts


def randomise_adapters(module, scale: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(module):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_layer_gate_is_exact_and_active_only_where_on():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    ctx = GateContext()
    layer = GatedLoRALinear(base, rank=2, alpha=4.0, context=ctx)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 4, 6)
    gate = torch.zeros(3, 4, dtype=torch.bool)
    gate[1, 2] = gate[2, 0] = True
    with ctx.active(gate):
        out = layer(x)
    plain = base(x)
    assert torch.equal(out[~gate], plain[~gate])  # bit-for-bit
    expected = plain[gate] + 2.0 * (x[gate] @ layer.lora_a.T @ layer.lora_b.T)
    torch.testing.assert_close(out[gate], expected)
    assert not torch.allclose(out[gate], plain[gate])
    with ctx.active(None):
        assert torch.equal(layer(x), plain)
    with ctx.active(gate.reshape(-1)[:5]), pytest.raises(ValueError, match="do not line up"):
        layer(x)


def test_add_gated_lora_targets_by_name_and_shares_base_weights():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)))
    weights = {n: p for n, p in net.named_parameters()}
    names = add_gated_lora(net, rank=2, alpha=2.0, context=GateContext(), targets=("2.*",))
    assert names == ["2.0", "2.1"]
    assert type(net[0]) is nn.Linear and isinstance(net[2][0], GatedLoRALinear)
    assert net[2][0].weight is weights["2.0.weight"]  # same Parameter: base state-dict keys unchanged
    assert set(net.state_dict()) == set(weights) | {"2.0.lora_a", "2.0.lora_b", "2.1.lora_a", "2.1.lora_b"}
    assert add_gated_lora(net, rank=2, alpha=2.0, context=GateContext()) == ["0"]  # never adapts twice


def test_ordinary_positions_equal_base_bit_for_bit_whatever_the_lora_weights():
    torch.manual_seed(0)
    built = mtp_toy.build(mtp_toy.model_config(d_model=32))
    model = built.model.eval()
    mask_id = built.ctx.mask_id
    assert len(model.backbone.adapted) == 2 * 7  # q, k, v, o, gate, up, down in both layers
    plain = built.ctx.build("backbone", {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}).eval()
    missing, unexpected = plain.load_state_dict(model.backbone.base.state_dict(), strict=False)
    assert not missing and unexpected and all("lora_" in k for k in unexpected)
    ids = torch.randint(0, 256, (2, 9))
    rows = torch.cat([ids, torch.full((2, 3), mask_id)], 1)
    with torch.no_grad():
        before = model(rows)
        for seed in (0, 1):
            randomise_adapters(model.backbone, seed=seed)
            with torch.no_grad():
                model.head.mask_embedding.normal_()
            after = model(rows)
            # the base model alone (a plain transformer with the same weights, no adapters) on the same rows
            base = model.head.base(plain(model.head.base.embed(rows)))
            assert torch.equal(after[:, :9], base[:, :9])
            assert torch.equal(after[:, :9], before[:, :9])
            assert (after[:, 9:] - base[:, 9:]).abs().max() > 1e-2  # the adapters do act at the masks
        # and the prefix alone gives the same logits (up to kernel shape effects)
        torch.testing.assert_close(model(ids), after[:, :9], rtol=1e-5, atol=1e-5)


def test_gate_shape_mismatch_is_an_error():
    built = mtp_toy.build(mtp_toy.model_config(d_model=32))
    model = built.model
    h = model.head.embed(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="gate has shape"):
        model.backbone(h[:, :3])


def test_build_rows_layout():
    ids = torch.arange(10, 20)[None].repeat(2, 1)
    rows, source, n = build_rows(ids, torch.tensor([[2, 4], [3, 1]]), n_masks=2, mask_id=99, pad_id=0)
    assert source.tolist() == [0, 0, 1, 1] and n.tolist() == [2, 4, 3, 1]
    assert rows.tolist() == [
        [10, 11, 99, 99, 0, 0],
        [10, 11, 12, 13, 99, 99],
        [10, 11, 12, 99, 99, 0],
        [10, 99, 99, 0, 0, 0],
    ]


def test_training_changes_only_adapters_mask_embedding_and_sampler():
    torch.manual_seed(0)
    built = mtp_toy.build(mtp_toy.model_config(d_model=32))
    model = built.model
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k and "sampler" not in k and "mask_embedding" not in k}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or ("sampler" in n) or ("mask_embedding" in n) for n in trainable)
    out = mtp_toy.train_mtp(model, mtp_toy.periodic(), 3, seq_len=24, batch_size=4)
    assert set(out) >= {"loss", "sampler_ce", "mask_ce", "consistency", "acc_mask1"}
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in lora_parameters(model.backbone) if p.shape[1] == 8)  # lora_b moved


def test_mask_blocks_pattern_and_positions():
    pattern = MaskBlocksPattern(length=5, cuts=(2, 3), n_masks=2)
    idx = torch.arange(9)
    allowed = pattern.allowed(idx[:, None], idx[None, :]).int().tolist()
    assert allowed == [
        # ordinary 0..4 (causal among themselves, never a mask) | block 1 (cut 2) | block 2 (cut 3)
        [1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0, 0, 0],  # first mask of block 1 sees x_0, x_1 and itself
        [1, 1, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 0, 0, 1, 1],
    ]
    assert pattern.positions(idx).tolist() == [0, 1, 2, 3, 4, 2, 3, 3, 4]
    cuts = spaced_cuts(24, 3, 4, torch.Generator().manual_seed(0))
    assert len(cuts) == 4 and cuts[0] >= 1 and cuts[-1] <= 24 - 3 - 1 and len(set(cuts[i + 1] - cuts[i] for i in range(3))) == 1


def test_block_layout_equals_one_causal_row_per_prefix():
    """The one-pass mask-block layout computes exactly what a causal row [x_<n, masks] computes."""
    torch.manual_seed(0)
    built = mtp_toy.build(mtp_toy.model_config(d_model=32, n_masks=3))
    model = built.model.eval()
    randomise_adapters(model.backbone, scale=0.2)
    mask_id = built.ctx.mask_id
    ids = torch.randint(0, 256, (2, 12))
    cuts = (2, 5, 8)
    pattern = MaskBlocksPattern(length=12, cuts=cuts, n_masks=3)
    with torch.no_grad():
        h = model.hidden(torch.cat([ids, torch.full((2, 9), mask_id)], 1), pattern=pattern)
        torch.testing.assert_close(h[:, :12], model.hidden(ids), rtol=1e-5, atol=1e-5)  # ordinary part = base
        for j, n in enumerate(cuts):
            row = model.hidden(torch.cat([ids[:, :n], torch.full((2, 3), mask_id)], 1))
            torch.testing.assert_close(h[:, 12 + 3 * j : 15 + 3 * j], row[:, n:], rtol=1e-5, atol=1e-5)
