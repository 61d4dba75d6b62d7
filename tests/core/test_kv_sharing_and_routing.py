"""Cross-layer KV sharing (``kv_source``) and prompt-time layer routing (``set_layer_skip``) in the
core caches and the baseline transformer: a reading layer gets its source's very tensors (same
storage) and the cache's byte count shows the saving; cached decoding equals the full forward; a
skipped layer neither computes nor writes, and equals the model without that layer."""

import pytest
import torch

from genloom.core.cache_policy import ManagedKVCache
from genloom.core.state import KVCache, StaticKVCache, begin_chunk, check_kv_source
from genloom.plugins.baseline.cache_policies import WindowPolicy
from genloom.testing import tiny_model

BACKBONE = {"name": "transformer", "d_model": 32, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2}


def lm(backbone=BACKBONE, seed=0):
    base = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
            "backbone": backbone, "objective": {"name": "next-token"}}
    return tiny_model(base=base, seed=seed).model.eval().double()


SHARED = {**BACKBONE, "kv_source": [0, 0, 2, 2]}


def step_by_step(model, seq, state):
    with torch.inference_mode():
        return torch.cat([model(seq[:, :3], state=state)] + [model(seq[:, t:t + 1], state=state) for t in range(3, seq.shape[1])], 1)


@pytest.mark.parametrize("cache", ["plain", "managed", "static"])
def test_reading_layers_use_their_source_storage(cache):
    model = lm(SHARED)
    assert not hasattr(model.backbone.layers[1].self_attn, "k_proj")  # a reading layer has no key/value projections
    seq = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    if cache == "plain":
        state = model.init_state(1, 4)
    elif cache == "managed":
        state = ManagedKVCache(4, 1, 2, 8, dtype=torch.float64, kv_source=[0, 0, 2, 2], policy=WindowPolicy(budget=None))
    else:
        state = StaticKVCache(4, 1, 2, 8, 16, dtype=torch.float64, kv_source=[0, 0, 2, 2])
    with torch.inference_mode():
        full = model(seq)
    cached = step_by_step(model, seq, state)
    assert torch.allclose(cached, full, atol=1e-10)  # cached decoding equals the full forward
    assert state.k[1].data_ptr() == state.k[0].data_ptr() and state.v[3].data_ptr() == state.v[2].data_ptr()
    assert state.k[2].data_ptr() != state.k[0].data_ptr()
    assert state.layer_nbytes()[1] == state.layer_nbytes()[3] == 0
    unshared = {"plain": lambda: KVCache(4, 1, 2, 8, state.capacity, dtype=torch.float64),
                "managed": lambda: ManagedKVCache(4, 1, 2, 8, dtype=torch.float64, policy=WindowPolicy(budget=None)),
                "static": lambda: StaticKVCache(4, 1, 2, 8, 16, dtype=torch.float64)}[cache]()
    step_by_step(lm(BACKBONE), seq, unshared)
    assert sum(state.layer_nbytes()) * 2 == sum(unshared.layer_nbytes())  # half the layers own storage: half the bytes


def test_sharing_survives_reorder_rollback_keep():
    model = lm(SHARED)
    state = model.init_state(2, 2)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]), state=state)
        model(torch.tensor([[7, 8, 9, 10], [1, 2, 3, 4]]), state=state)  # grows past capacity
        state.keep(torch.tensor([[True, True, False, False], [True, False, True, False]]))
        state.reorder(torch.tensor([1, 1, 0]))
        state.rollback(state.lengths - 1)
        model(torch.tensor([[3], [3], [3]]), state=state)
    assert state.k[1] is state.k[0] and state.v[3] is state.v[2]


def test_sharing_survives_extend_and_compact_and_routing_refuses_extend():
    """Continuous batching's operations on a shared cache: appended rows and compacted slots keep
    the reading layers on their source's storage, and decoding on equals each row decoded alone."""
    model = lm(SHARED)
    a, b = [[1, 2, 3, 4, 5]], [[9, 8]]
    with torch.inference_mode():
        solo = [model(torch.tensor(p)) for p in (a, b)]
        sa, sb = model.init_state(1, 8), model.init_state(1, 4)
        model(torch.tensor(a), state=sa)
        model(torch.tensor(b), state=sb)
        sa.extend(sb)
        assert sa.k[1] is sa.k[0] and sa.v[3] is sa.v[2] and sa.batch_size == 2
        sa.compact()
        assert sa.k[1] is sa.k[0] and sa.v[3] is sa.v[2]
        step = model(torch.tensor([[6], [7]]), state=sa)[:, -1]
        full_a, full_b = model(torch.tensor([a[0] + [6]]))[:, -1], model(torch.tensor([b[0] + [7]]))[:, -1]
    assert torch.allclose(step[0], full_a[0], atol=1e-10) and torch.allclose(step[1], full_b[0], atol=1e-10)
    assert solo[0].shape[1] == 5
    routed = model.init_state(1, 4)
    routed.set_layer_skip(torch.tensor([[False, True, False, False]]))
    with pytest.raises(NotImplementedError, match="routed layers"):
        routed.extend(model.init_state(1, 4))


def test_sharing_off_is_the_plain_transformer_and_bad_layouts_are_refused():
    plain, shared_off = lm(BACKBONE), lm({**BACKBONE, "kv_source": [0, 1, 2, 3]})
    seq = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.inference_mode():
        assert torch.equal(plain(seq), shared_off(seq))
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"backbone.kv_source.*kv_source\[2\] = 1"):
        lm({**BACKBONE, "kv_source": [0, 0, 1, 3]})
    with pytest.raises(ValueError, match="one source layer per layer"):
        check_kv_source([0, 0], 3)


# -- prompt-time layer routing ------------------------------------------------------------------

def without_layer(drop: int):
    """The model of :func:`lm` (same weights) whose backbone lacks layer ``drop``."""
    import copy

    other = lm()
    other.backbone.layers = torch.nn.ModuleList(b for i, b in enumerate(other.backbone.layers) if i != drop)
    other.backbone.kv_source = list(range(len(other.backbone.layers)))
    other.backbone.cfg = copy.copy(other.backbone.cfg)
    other.backbone.cfg.n_layers = len(other.backbone.layers)
    return other


@pytest.mark.parametrize("managed", [False, True])
def test_skipped_layers_are_identity_and_write_nothing(managed):
    model = lm()
    seq = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6, 7]])
    skip = torch.tensor([[False, True, False, False], [False, False, False, False]])  # row 0 skips layer 1
    policy = WindowPolicy(budget=None) if managed else None
    model.backbone.cache_policy = policy
    state = model.init_state(2, 4)
    state.set_layer_skip(skip)
    cached = step_by_step(model, seq, state)
    # row 0 is the model without layer 1, row 1 the whole model
    with torch.inference_mode():
        assert torch.allclose(cached[0], without_layer(1)(seq[:1])[0], atol=1e-10)
        assert torch.allclose(cached[1], model(seq[1:])[0], atol=1e-10)
    # row 0's layer-1 keys/values were never written (its entries are zeros / invalid)
    if managed:
        held = state.held(1)
        assert not bool(held.valid[0].any()) and bool(held.valid[1].all())
    else:
        assert float(state.k[1][0].abs().sum()) == 0.0 and float(state.k[1][1].abs().sum()) > 0
    # cached decoding equals a single full pass (a fresh cache, the same mask)
    fresh = model.init_state(2, 4)
    fresh.set_layer_skip(skip)
    with torch.inference_mode():
        assert torch.allclose(cached, model(seq, state=fresh), atol=1e-10)
    model.backbone.cache_policy = None
    # the broken variant: without the mask row 0 differs
    plain = step_by_step(model, seq, model.init_state(2, 4))
    assert not torch.allclose(plain[0], cached[0], atol=1e-6)


def test_a_layer_every_row_skips_holds_no_storage_and_the_mask_is_fixed_at_prefill():
    model = lm()
    state = model.init_state(2, 8)
    before = state.layer_nbytes()
    state.set_layer_skip(torch.tensor([[False, False, True, False], [False, False, True, False]]))
    assert state.layer_nbytes()[2] == 0 and state.layer_nbytes()[0] == before[0]
    step_by_step(model, torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]] * 2), state)  # grows; layer 2 stays empty
    assert state.layer_nbytes()[2] == 0
    with pytest.raises(ValueError, match="fixed at prefill"):
        state.set_layer_skip(None)
    shared = lm(SHARED).init_state(1, 4)
    with pytest.raises(ValueError, match="layer 1 reads layer 0"):
        shared.set_layer_skip(torch.tensor([[True, False, False, False]]))


def test_begin_chunk_numbers_valid_tokens_and_defers_to_the_state():
    h = torch.zeros(2, 4, 8)
    positions, valid = begin_chunk(h)
    assert positions.tolist() == [[0, 1, 2, 3]] * 2 and valid is None
    left_padded = torch.tensor([[False, True, True, True], [True, True, True, True]])
    positions, valid = begin_chunk(h, valid=left_padded)
    assert positions.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]] and valid is left_padded
    cache = KVCache(1, 2, 1, 4)
    begin_chunk(h, cache, left_padded)
    positions, _ = begin_chunk(h[:, :1], cache)  # the next token continues each row's numbering
    assert positions.tolist() == [[3], [4]]
