"""MLKV: only m of L layers own key/value heads and consecutive groups read the identical cached
tensors, so the cache's bytes are m*g/(L*h) of multi-head attention's; with m = L and g = h the
model is multi-head attention exactly; cached decoding equals the full forward. Each check is also
run on a broken variant to show that it can fail."""

import pytest
import torch

from genloom.core.errors import ConfigError
from genloom.core.state import KVCache
from genloom.testing import tiny_model

L, H, D = 4, 4, 32


def model(name="mlkv", kv_layers=2, n_kv_heads=1, seed=0):
    base = {"name": "transformer", "d_model": D, "n_layers": L, "n_heads": H, "n_kv_heads": n_kv_heads}
    backbone = {"name": "mlkv", "base": base, "kv_layers": kv_layers} if name == "mlkv" else base
    cfg = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False}, "backbone": backbone, "objective": {"name": "next-token"}}
    return tiny_model(base=cfg, seed=seed).model.eval().double()


SEQ = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 2, 3, 4, 5, 6, 7, 8, 9]])


def decode(m, state):
    with torch.inference_mode():
        return torch.cat([m(SEQ[:, :4], state=state)] + [m(SEQ[:, t:t + 1], state=state) for t in range(4, SEQ.shape[1])], 1)


def shares_storage(state, groups) -> bool:
    """Every layer of a group holds its first layer's very tensors, and different groups do not."""
    firsts = [g[0] for g in groups]
    same = all(state.k[i].data_ptr() == state.k[g[0]].data_ptr() and state.v[i].data_ptr() == state.v[g[0]].data_ptr() for g in groups for i in g)
    distinct = len({state.k[f].data_ptr() for f in firsts}) == len(firsts)
    return same and distinct


class CopyingCache(KVCache):
    """Broken: reading layers get a copy of their source's keys/values instead of the same storage."""

    def _relink(self):
        super()._relink()
        for i, s in enumerate(self.kv_source):
            if s != i and self.k[s] is not None:
                self.k[i], self.v[i] = self.k[s].clone(), self.v[s].clone()

    def layer_nbytes(self):
        from genloom.core.state import storage_bytes

        return [storage_bytes([self.k[i], self.v[i]]) for i in range(self.n_layers)]


@pytest.mark.parametrize("m,g", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_groups_read_the_same_storage_and_bytes_follow_m_g(m, g):
    mlkv = model(kv_layers=m, n_kv_heads=g)
    state = mlkv.init_state(2, 16)
    cached = decode(mlkv, state)
    with torch.inference_mode():
        assert torch.allclose(cached, mlkv(SEQ), atol=1e-5)  # cached decoding equals the full forward
    src = state.kv_source
    groups = [[i for i in range(L) if src[i] == s] for s in sorted(set(src))]
    assert len(groups) == m and all(len(grp) in (L // m, -(-L // m)) for grp in groups)  # consecutive, near-equal groups
    assert shares_storage(state, groups)
    mha_state = model("transformer", n_kv_heads=H).init_state(2, 16)
    decode(model("transformer", n_kv_heads=H), mha_state)
    assert sum(state.layer_nbytes()) * L * H == sum(mha_state.layer_nbytes()) * m * g  # m*g/(L*h) of MHA's bytes
    # the broken variant: copies instead of shared storage -- the same logits, but neither check holds
    broken = CopyingCache(L, 2, g, D // H, 16, dtype=torch.float64, kv_source=src)
    assert torch.allclose(decode(mlkv, broken), cached, atol=1e-10)
    if m < L:
        assert not shares_storage(broken, groups)
        assert sum(broken.layer_nbytes()) * L * H != sum(mha_state.layer_nbytes()) * m * g


def test_all_layers_and_heads_is_multi_head_attention_exactly():
    mlkv, mha = model(kv_layers=L, n_kv_heads=H), model("transformer", n_kv_heads=H)
    with torch.inference_mode():
        assert torch.equal(mlkv(SEQ), mha(SEQ))
    assert not torch.equal(model(kv_layers=L - 1, n_kv_heads=H)(SEQ), mha(SEQ))  # one shared layer changes the model


def test_a_reading_layer_attends_with_its_group_keys():
    """Broken variant of the mechanism: if layer 1 read layer 2's keys/values, the cached decoding
    would no longer equal the full forward; the check notices."""
    mlkv = model(kv_layers=2, n_kv_heads=1)
    state = mlkv.init_state(2, 16)
    read = state.read
    state.read = lambda layer, **kw: read(2 if layer == 1 else layer, **kw)
    with torch.inference_mode():
        assert not torch.allclose(decode(mlkv, state), mlkv(SEQ), atol=1e-5)


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="kv_layers"):
        model(kv_layers=L + 1)
    with pytest.raises(ConfigError, match="backbone.kv_layers"):
        model(kv_layers=0)
