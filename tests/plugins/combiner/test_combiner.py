"""Combiner-Fixed: every query's weights over the keys sum to one and are positive on exactly the
earlier positions (direct in its region, indirect through the abstractions of earlier regions);
the layer is strictly causal (zero Jacobian to the future); region size 1 is full causal
attention exactly; the region-summary backend equals the definition; cached decoding equals
recomputation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.core.pattern import CAUSAL
from genloom.plugins.combiner import CombinerConfig
from genloom.plugins.combiner.attention import attention_entries, weights
from genloom.testing import build, check_backbone, check_decoder, check_kernel, check_model_config, tiny_model
from genloom.toolkit.recurrent import greedy_matches_recomputation

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "combiner.yaml"
NODE = {"name": "combiner", "d_model": 16, "n_layers": 2, "n_heads": 2, "region_size": 3}
SMALL = ["backbone.d_model=16", "backbone.n_layers=1", "backbone.n_heads=2", "backbone.region_size=4"]


def err(a, b):
    return (a - b).abs().max().item()


def _case(L=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, L, 4, generator=g, dtype=torch.float64) for _ in range(3))
    return q, k, v, torch.randn(2, 4, generator=g, dtype=torch.float64)


def support_and_mass(P, allowed):
    """(largest |row sum - 1|, True when the support is exactly ``allowed``)."""
    return (P.sum(-1) - 1).abs().max().item(), bool(((P > 0) == allowed).all())


@pytest.mark.parametrize("region_size", [1, 3, 4, 13, 20])
def test_weights_sum_to_one_with_support_on_every_earlier_position(region_size):
    q, k, _, w = _case()
    P = weights(q, k, w, region_size=region_size)
    gap, exact_support = support_and_mass(P, CAUSAL.dense(13))
    assert gap < 1e-12 and exact_support


def test_with_padding_and_cached_positions_the_support_is_the_real_earlier_keys():
    q, k, _, w = _case()
    kv_pos = torch.stack([torch.arange(13), torch.cat([torch.zeros(2, dtype=torch.long), torch.arange(11)])])
    kv_valid = torch.ones(2, 13, dtype=torch.bool)
    kv_valid[1, :2] = False
    q_pos = kv_pos[:, -4:]
    P = weights(q[:, :, -4:], k, w, region_size=3, q_pos=q_pos, kv_pos=kv_pos, kv_valid=kv_valid)
    allowed = (kv_pos[:, None, :] <= q_pos[:, :, None]) & kv_valid[:, None, :]
    gap, exact_support = support_and_mass(P, allowed[:, None].expand_as(P))
    assert gap < 1e-12 and exact_support


def test_broken_variants_fail_the_property():
    """Without the abstractions (local attention only) the support misses earlier regions; with the
    region values summed instead of averaged by q(j | Omega) the weights no longer sum to one."""
    q, k, _, w = _case()
    P = weights(q, k, w, region_size=4)
    region = torch.arange(13) // 4
    local_only = P * (region[:, None] == region[None, :])
    local_only = local_only / local_only.sum(-1, keepdim=True)
    assert not support_and_mass(local_only, CAUSAL.dense(13))[1]
    same = region[:, None] == region[None, :]
    members = (region[None, :] == torch.arange(4)[:, None]).to(P.dtype)  # (R, L)
    region_mass = (P * ~same) @ members.T  # p(Omega_r | i): what each earlier region received
    summed = torch.where(same, P, region_mass[..., region] * (P > 0))  # every key gets its region's whole mass
    assert support_and_mass(summed, CAUSAL.dense(13))[0] > 1e-3


def test_region_size_one_is_full_causal_attention_exactly():
    q, k, v, w = _case()
    with kernels.use("attention", "reference") as ref:
        full = ref(q, k, v, pattern=CAUSAL)
    for backend in ("reference", "regions"):
        with kernels.use("combiner_attention", backend) as comb:
            assert err(comb(q, k, v, w, region_size=1), full) < 1e-12
    with kernels.use("combiner_attention", "regions") as comb:
        assert err(comb(q, k, v, w, region_size=4), full) > 1e-3  # real regions approximate it


@pytest.mark.parametrize("region_size", [1, 3, 4, 16])
def test_region_backend_equals_the_definition(region_size):
    q, k, v, w = _case()
    kv_pos = torch.arange(13).expand(2, 13)
    with kernels.use("combiner_attention", "reference") as ref, kernels.use("combiner_attention", "regions") as fast:
        assert err(fast(q, k, v, w, region_size=region_size), ref(q, k, v, w, region_size=region_size)) < 1e-12
        kw = dict(region_size=region_size, q_pos=kv_pos[:, -5:], kv_pos=kv_pos)
        assert err(fast(q[:, :, -5:], k, v, w, **kw), ref(q[:, :, -5:], k, v, w, **kw)) < 1e-12


def test_region_backend_gradients_agree_with_the_definition():
    """The conformance kit's kernel check: values and the gradients of q, k, v and w."""
    q, k, v, w = _case()
    check_kernel("combiner_attention", "regions", q, k, v, w, region_size=4, atol=1e-12, rtol=1e-12)
    kv_pos = torch.arange(13).expand(2, 13)
    check_kernel("combiner_attention", "regions", q[:, :, -5:], k, v, w, region_size=4, q_pos=kv_pos[:, -5:], kv_pos=kv_pos, atol=1e-12, rtol=1e-12)


def backbone(**overrides):
    model, _ = build("backbone", {**NODE, **overrides})
    model = model.double().eval()
    with torch.no_grad():
        for block in model.layers:
            block.attn.w.normal_(generator=torch.Generator().manual_seed(5))
    return model


def test_layer_is_strictly_causal_and_reaches_every_earlier_position():
    model = backbone(n_layers=1)
    h = torch.randn(1, 11, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    read = torch.randn(16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: model(x)[0] @ read, h)[:, 0].abs().sum(-1)  # (L out, L in)
    future = torch.ones(11, 11, dtype=torch.bool).triu(1)
    assert jac[future].max().item() == 0.0
    assert jac[~future].min().item() > 1e-8


def test_backbone_contract():
    check_backbone(NODE, length=11, chunks=(1, 3, 2, 5), tol=1e-10)


@pytest.mark.parametrize("chunks", [(1,) * 14, (5, 1, 8)])
def test_cached_decoding_equals_recompute(chunks):
    model = backbone()
    h = torch.randn(2, 14, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        full = model(h)
        state = model.init_state(2, 4)
        outs, at = [], 0
        for n in chunks:
            outs.append(model(h[:, at : at + n], state=state))
            at += n
    assert err(torch.cat(outs, 1), full) < 1e-10


def test_attention_entries_are_sub_quadratic():
    got = attention_entries(128, 16)
    assert got == {"combiner": 8 * 16 * 17 // 2 + 16 * sum(range(8)), "full_causal": 128 * 129 // 2}


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_heads"):
        CombinerConfig(d_model=12, n_heads=4)


def test_shipped_config_trains_and_decodes():
    torch.manual_seed(0)
    check_model_config(CONFIG, SMALL, batch={"ids": torch.randint(0, 256, (2, 17))})
    built = tiny_model(CONFIG, SMALL, seed=0)
    built.model.double()
    greedy_matches_recomputation(built, [[100, 101, 102, 103, 104, 105, 106, 107, 108, 109], [50, 51]], max_new_tokens=6)
    for decoder in ({"name": "sampling"}, {"name": "beam", "num_beams": 2}):
        check_decoder(built, decoder, max_new_tokens=4)
