"""Cross-Layer Attention: with sharing factor s only ceil(L/s) layers produce keys/values, the
cache holds exactly ceil(L/s) x n_kv_heads heads per token (its own byte count), consumer layers
attend with their producer's cached tensors (same storage), cached decoding equals the full forward,
and s = 1 is the plain transformer. Broken variants show each check can fail."""

import pytest
import torch

from genloom.core.errors import ConfigError
from genloom.plugins.cla.model import cla_layout
from genloom.testing import tiny_model

L, H, KV, D = 6, 4, 2, 32


def model(sharing_factor=2, name="cla", seed=0):
    base = {"name": "transformer", "d_model": D, "n_layers": L, "n_heads": H, "n_kv_heads": KV}
    backbone = {"name": "cla", "base": base, "sharing_factor": sharing_factor} if name == "cla" else base
    cfg = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False}, "backbone": backbone, "objective": {"name": "next-token"}}
    return tiny_model(base=cfg, seed=seed).model.eval().double()


SEQ = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 5, 6, 7, 8]])


def decode(m, state):
    with torch.inference_mode():
        return torch.cat([m(SEQ[:, :3], state=state)] + [m(SEQ[:, t:t + 1], state=state) for t in range(3, SEQ.shape[1])], 1)


def heads_per_token(state) -> float:
    """Key/value heads the cache stores per token, from its own byte count."""
    per_head_token = 2 * (D // H) * 8 * state.batch_size * state.capacity  # keys and values, float64
    return sum(state.layer_nbytes()) / per_head_token


@pytest.mark.parametrize("s", [1, 2, 3, 6])
def test_cache_holds_ceil_l_over_s_producers(s):
    cla = model(s)
    state = cla.init_state(2, 16)
    cached = decode(cla, state)
    with torch.inference_mode():
        assert torch.allclose(cached, cla(SEQ), atol=1e-5)
    producers = sorted(set(state.kv_source))
    assert producers == list(range(0, L, s)) and state.kv_source == cla_layout(L, s)
    assert heads_per_token(state) == -(-L // s) * KV
    for i in range(L):  # consumers hold their producer's very tensors
        assert state.k[i].data_ptr() == state.k[i - i % s].data_ptr()
        assert hasattr(cla.backbone.layers[i].self_attn, "k_proj") == (i % s == 0)


def test_sharing_factor_one_is_the_plain_transformer():
    with torch.inference_mode():
        assert torch.equal(model(1)(SEQ), model(name="transformer")(SEQ))
        assert not torch.equal(model(2)(SEQ), model(name="transformer")(SEQ))


def test_broken_variants_fail_the_checks():
    cla = model(2)
    state = cla.init_state(2, 16)
    read = state.read
    state.read = lambda layer, **kw: read(0 if layer == 3 else layer, **kw)  # layer 3 reads the wrong producer's keys
    with torch.inference_mode():
        assert not torch.allclose(decode(cla, state), cla(SEQ), atol=1e-5)
    unshared = model(name="transformer").init_state(2, 16)
    decode(model(name="transformer"), unshared)
    assert heads_per_token(unshared) == L * KV != -(-L // 2) * KV  # without sharing the count is L x n_kv_heads


def test_bad_base_is_refused():
    cfg = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "objective": {"name": "next-token"},
           "backbone": {"name": "cla", "base": {"name": "mamba", "d_model": 16, "n_layers": 2}}}
    with pytest.raises(ConfigError, match="backbone.base.name.*no kv_source field"):
        tiny_model(base=cfg)
    with pytest.raises(ConfigError, match="backbone.sharing_factor"):
        model(0)
