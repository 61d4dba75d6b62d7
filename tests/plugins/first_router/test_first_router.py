"""FiRST: layer-skip decisions come from per-layer routers on the prompt at prefill and stay fixed
for the whole decode; skipped layers are the identity for every generated token and their KV cache
is never written; with every router on, the logits are the base model's; cached decoding equals a
full recompute under the same skip mask. Broken variants show the checks can fail."""

import pytest
import torch

from genloom.core.state import KVCache
from genloom.testing import check_objective, tiny_model

BASE = {"name": "transformer", "d_model": 32, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2}


def build(threshold=0.5, seed=0, **extra):
    cfg = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
           "backbone": {"name": "first-router", "base": BASE, "threshold": threshold, **extra}, "objective": {"name": "first-router", "skip_weight": 0.5}}
    return tiny_model(base=cfg, seed=seed)


def plain(seed=0):
    cfg = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False}, "backbone": BASE, "objective": {"name": "next-token"}}
    return tiny_model(base=cfg, seed=seed).model.eval().double()


PROMPT = torch.tensor([[5, 6, 7, 8, 9, 10], [200, 201, 202, 203, 204, 205]])


def decode(model, state, steps=5):
    """Greedy decoding through ``state``; returns the sequence and the logits of every step."""
    with torch.inference_mode():
        logits = model(PROMPT, state=state)
        seq, outs = PROMPT, [logits]
        for _ in range(steps):
            tok = logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, tok], 1)
            logits = model(tok, state=state)
            outs.append(logits)
    return seq, torch.cat(outs, 1)


def routed_model():
    """Routers that send the two prompts different ways: row 0 skips layers 1 and 2, row 1 runs all."""
    model = build().model.eval().double()
    with torch.no_grad():
        for i, r in enumerate(model.backbone.routers):
            r.weight.zero_()
            r.bias.fill_(3.0)
        # route on the mean embedding: the prompts' means differ, so one direction separates them
        with torch.inference_mode():
            h = model.head.embed(PROMPT).double()
        direction = h[1].mean(0) - h[0].mean(0)
        for i in (1, 2):
            model.backbone.routers[i].weight.copy_(direction[None] * 1e3)
            model.backbone.routers[i].bias.fill_(-(direction @ (h[0].mean(0) + h[1].mean(0)) / 2 * 1e3))
    return model


def test_all_routers_on_is_the_base_model():
    model = build(threshold=0.5).model.eval().double()  # sigmoid(3) = 0.95 > 0.5: every layer runs
    base = plain()
    state = model.init_state(2, 4)
    _, cached = decode(model, state)
    seq, _ = decode(base, base.init_state(2, 4))
    with torch.inference_mode():
        assert torch.equal(model(seq), base(seq))
        assert torch.allclose(cached, base(seq), atol=1e-10)
    assert not bool(state.layer_skip.any())
    always = build(threshold=1.0).model.eval().double()  # threshold 1: every router says skip
    with torch.inference_mode():
        assert not torch.allclose(decode(always, always.init_state(2, 4))[1], cached, atol=1e-3)


def test_decisions_fixed_at_prefill_skipped_layers_write_nothing_and_cached_equals_recompute():
    model = routed_model()
    calls = []
    route = model.backbone.route
    model.backbone.route = lambda layer, h, valid: (calls.append(layer), route(layer, h, valid))[1]
    state = model.init_state(2, 4)
    seq, cached = decode(model, state)
    assert calls == [0, 1, 2, 3]  # each router asked once, at the prefill; never while decoding
    assert state.layer_skip.tolist() == [[False, True, True, False], [False, False, False, False]]
    assert float(state.k[1][0].abs().sum()) == 0 and float(state.k[2][0].abs().sum()) == 0  # row 0 never wrote layers 1, 2
    assert float(state.k[1][1].abs().sum()) > 0
    # a full recompute of the whole sequence in one pass under the same skip mask
    fresh = KVCache(4, 2, 2, 8, 4, dtype=torch.float64)
    fresh.set_layer_skip(state.layer_skip)
    with torch.inference_mode():
        full = model(seq, state=fresh)
    assert torch.allclose(cached, full, atol=1e-5)
    # row 1 (every layer run) is the base model; row 0 is not
    with torch.inference_mode():
        base = plain()(seq)
    assert torch.allclose(cached[1], base[1], atol=1e-10) and not torch.allclose(cached[0], base[0], atol=1e-3)


def test_broken_variant_decisions_that_do_not_stay_fixed_fail_the_recompute_check():
    model = routed_model()
    state = model.init_state(2, 4)
    route = state.route
    state.route = lambda layer, h, valid: route(layer, h, valid) if state._advances == 1 else None  # skipped layers run again when decoding
    seq, cached = decode(model, state)
    fresh = KVCache(4, 2, 2, 8, 4, dtype=torch.float64)
    fresh.set_layer_skip(state.layer_skip)
    with torch.inference_mode():
        assert not torch.allclose(cached, model(seq, state=fresh), atol=1e-5)


def test_training_gates_softly_and_the_objective_rewards_skipping():
    built = build(router_bias=0.0)
    batch = {"ids": torch.randint(0, 256, (2, 12))}
    out = check_objective(built, batch)
    assert 0 < float(out["layers_run"]) < 1
    assert built.model.backbone.routers[0].bias.grad is not None and float(built.model.backbone.routers[0].bias.grad) > 0  # the penalty pushes p down
    model = built.model
    opt = torch.optim.SGD([p for r in model.backbone.routers for p in r.parameters()], lr=5.0)
    before = float(out["layers_run"])
    for _ in range(5):
        opt.zero_grad()
        loss = model.loss(batch)
        loss["loss"].backward()
        opt.step()
    assert float(model.loss(batch)["layers_run"]) < before


def test_bad_base_is_refused():
    from genloom.core.errors import ConfigError

    cfg = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "objective": {"name": "next-token"},
           "backbone": {"name": "first-router", "base": {"name": "mamba", "d_model": 16, "n_layers": 2}}}
    with pytest.raises(ConfigError, match="backbone.base"):
        tiny_model(base=cfg)
    with pytest.raises(ConfigError, match="backbone.threshold"):
        build(threshold=1.5)
