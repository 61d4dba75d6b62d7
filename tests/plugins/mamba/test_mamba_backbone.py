"""The Mamba backbone: full forward == recurrent decoding, state rollback/reorder/snapshot, padding,
the selection mechanism, initialisation, and assembly from the registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genloom.core import hookimpl, kernels, records
from genloom.core.pattern import AttentionPattern, CAUSAL, FULL
from genloom.plugins.mamba import MambaConfig

ROOT = Path(__file__).resolve().parents[3]
CPU_BACKENDS = ["reference", "chunked"]


def build(**overrides):
    from genloom.core.context import BuildContext
    from genloom.core.plugins import get_registry

    node = {"name": "mamba", "d_model": 16, "n_layers": 2, "d_state": 4, "d_conv": 4, "expand": 2, **overrides}
    ctx = BuildContext(get_registry())
    torch.manual_seed(0)
    model = ctx.build("backbone", node).double()
    assert ctx.d_model == node["d_model"]
    return model.eval()


def inputs(batch=3, length=17, width=16, seed=1):
    return torch.randn(batch, length, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def max_err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_full_forward_equals_token_by_token_and_uneven_chunks(backend):
    model = build()
    h = inputs()
    with kernels.use("selective_scan", backend), torch.no_grad():
        full = model(h, pattern=CAUSAL)
        state = model.init_state(3)
        steps = torch.cat([model(h[:, t : t + 1], pattern=CAUSAL, state=state) for t in range(h.shape[1])], 1)
        assert state.lengths.tolist() == [17, 17, 17]
        state = model.init_state(3)
        bounds = [0, 1, 6, 7, 10, 17]  # chunks of 1, 5, 1, 3, 7 tokens
        chunks = torch.cat([model(h[:, a:b], state=state) for a, b in zip(bounds, bounds[1:])], 1)
    assert max_err(steps, full) < 1e-10
    assert max_err(chunks, full) < 1e-10


def test_backends_agree_on_the_full_model_and_its_gradients():
    model = build()
    h = inputs()
    results = {}
    for backend in CPU_BACKENDS:
        model.zero_grad()
        with kernels.use("selective_scan", backend):
            out = model(h)
            (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        results[backend] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (out_a, grads_a), (out_b, grads_b) = results.values()
    assert max_err(out_a, out_b) < 1e-10
    for name, grad in grads_a.items():
        assert grad.abs().sum() > 0, f"no gradient reaches {name}"
        assert max_err(grad, grads_b[name]) < 1e-9, name


def test_state_size_does_not_grow_with_length():
    model = build()
    state = model.init_state(2)
    shapes = [tuple(t.shape) for t in state.conv + state.ssm]
    with torch.no_grad():
        model(inputs(batch=2, length=40), state=state)
    assert [tuple(t.shape) for t in state.conv + state.ssm] == shapes
    assert shapes[0] == (2, 32, 3) and shapes[-1] == (2, 32, 4)  # (B, d_inner, d_conv-1), (B, d_inner, d_state)


def test_rollback_then_readvance_equals_straight_advance():
    """Speculative-decoding use: advance by k drafts, keep a different prefix per sequence."""
    model = build()
    h = inputs(length=14)
    alt = inputs(length=14, seed=7)
    with torch.no_grad():
        state = model.init_state(3)
        model(h[:, :6], state=state)
        model(alt[:, 6:11], state=state)  # 5 drafts
        keep = torch.tensor([0, 2, 5])
        state.rollback(6 + keep)
        assert state.lengths.tolist() == [6, 8, 11]
        # continue every row with its own accepted prefix (rows differ): compare row by row
        for b in range(3):
            k = int(keep[b])
            row = model.init_state(1)
            model(h[b : b + 1, :6], state=row)
            if k:
                model(alt[b : b + 1, 6 : 6 + k], state=row)
            for i in range(len(row.ssm)):
                assert max_err(state.ssm[i][b], row.ssm[i][0]) < 1e-12
                assert max_err(state.conv[i][b], row.conv[i][0]) < 1e-12
        # uniform rollback, then re-advance, equals the straight advance
        state = model.init_state(3)
        model(h[:, :6], state=state)
        model(alt[:, 6:11], state=state)
        state.rollback(6)
        again = model(h[:, 6:14], state=state)
        straight_state = model.init_state(3)
        straight = model(h, state=straight_state)
    assert max_err(again, straight[:, 6:]) < 1e-10
    assert state.lengths.tolist() == [14, 14, 14]


def test_rollback_refuses_to_go_past_the_last_advance_or_forward():
    model = build()
    h = inputs(length=8)
    with torch.no_grad():
        state = model.init_state(3)
        model(h[:, :5], state=state)
        model(h[:, 5:8], state=state)
        with pytest.raises(ValueError, match="most recent advance"):
            state.rollback(4)
        with pytest.raises(ValueError, match="roll forward"):
            state.rollback(9)
        state.rollback(6)
        state.rollback(5)  # twice inside the same advance is fine
        assert state.lengths.tolist() == [5, 5, 5]


def test_snapshot_restore_returns_to_an_earlier_point():
    model = build()
    h = inputs(length=12)
    with torch.no_grad():
        state = model.init_state(3)
        model(h[:, :4], state=state)
        snap = state.snapshot()
        model(h[:, 4:7], state=state)
        model(h[:, 7:9], state=state)
        state.restore(snap)
        assert state.lengths.tolist() == [4, 4, 4]
        rest = model(h[:, 4:12], state=state)
        full = model(h)
    assert max_err(rest, full[:, 4:]) < 1e-10


def test_reorder_selects_batch_rows():
    model = build()
    h = inputs(length=10)
    index = torch.tensor([2, 0, 0])
    with torch.no_grad():
        state = model.init_state(3)
        model(h[:, :6], state=state)
        state.reorder(index)
        rest = model(h[index, 6:], state=state)
        state.rollback(7)  # the kept advance was reordered too
        again = model(h[index, 7:], state=state)
        full = model(h[index])
    assert max_err(rest, full[:, 6:]) < 1e-10
    assert max_err(again, full[:, 7:]) < 1e-10


def test_padding_is_ignored_in_full_and_stateful_forwards():
    """valid=False tokens (left padding, holes) behave as if they were not there."""
    model = build()
    h = inputs(batch=2, length=9)
    valid = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        out = model(h, valid=valid)
        state = model.init_state(2)
        out_state = model(h, valid=valid, state=state)
        assert state.lengths.tolist() == [6, 7]
        nxt = inputs(batch=2, length=1, seed=3)
        step = model(nxt, state=state)
        for b in range(2):
            alone = h[b : b + 1, valid[b]]
            ref = model(torch.cat([alone, nxt[b : b + 1]], 1))
            assert max_err(out[b, valid[b]], ref[0, :-1]) < 1e-10
            assert max_err(out_state[b, valid[b]], ref[0, :-1]) < 1e-10
            assert max_err(step[b, 0], ref[0, -1]) < 1e-10


def test_output_is_causal():
    model = build()
    h = inputs(length=10)
    changed = h.clone()
    changed[:, 6:] += 1.0
    with torch.no_grad():
        a, b = model(h), model(changed)
    assert max_err(a[:, :6], b[:, :6]) == 0.0
    assert max_err(a[:, 6:], b[:, 6:]) > 1e-3


def test_selection_zero_step_ignores_a_token_and_a_large_step_forgets_the_past():
    """Section 3.5.2: delta -> 0 keeps the state (token ignored), delta -> inf resets it to the current input."""
    torch.manual_seed(0)
    B, L, D, N = 2, 6, 3, 4
    u, C = torch.randn(B, L, D, dtype=torch.float64), torch.randn(B, L, N, dtype=torch.float64)
    Bm = torch.randn(B, L, N, dtype=torch.float64)
    A = -torch.arange(1, N + 1, dtype=torch.float64).repeat(D, 1)
    delta = torch.rand(B, L, D, dtype=torch.float64) * 0.5 + 0.1
    _, state = kernels.call("selective_scan", u, delta, A, Bm, C)
    ignored = delta.clone()
    ignored[:, 3] = 0.0
    _, state_ignored = kernels.call("selective_scan", u, ignored, A, Bm, C)
    _, state_without = kernels.call("selective_scan", u[:, [0, 1, 2, 4, 5]], delta[:, [0, 1, 2, 4, 5]], A, Bm[:, [0, 1, 2, 4, 5]], C[:, [0, 1, 2, 4, 5]])
    assert max_err(state_ignored, state_without) < 1e-12
    assert max_err(state_ignored, state) > 1e-3
    # a huge step at t=L-1: exp(delta A) ~ 0, the earlier history is gone
    reset = delta.clone()
    reset[:, -1] = 50.0
    other_history = torch.randn(B, L, D, dtype=torch.float64)
    other_history[:, -1] = u[:, -1]
    _, s1 = kernels.call("selective_scan", u, reset, A, Bm, C)
    _, s2 = kernels.call("selective_scan", other_history, reset, A, Bm, C)
    assert max_err(s1, s2) < 1e-12
    assert max_err(s1, 50.0 * Bm[:, -1, None, :] * u[:, -1, :, None]) < 1e-12


def test_initialisation_follows_the_paper():
    model = build(dt_min=0.002, dt_max=0.05)
    mixer = model.layers[0].mixer
    A = -torch.exp(mixer.A_log)
    assert torch.allclose(A, -torch.arange(1, 5, dtype=torch.float64).repeat(32, 1), rtol=1e-6, atol=0)  # S4D-real
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.002 * (1 - 1e-6) and dt.max() <= 0.05 * (1 + 1e-6)
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    assert mixer.dt_proj.in_features == math.ceil(16 / 16) and mixer.x_proj.out_features == 1 + 2 * 4
    assert model.layers[0].mixer.conv1d.weight.shape == (32, 1, 4)  # depthwise


def test_only_the_causal_pattern_is_served():
    model = build()
    assert model.supports(CAUSAL) and not model.supports(FULL)
    assert not model.supports(AttentionPattern("block_causal", block_size=4))
    with pytest.raises(ValueError, match="causal"):
        model(inputs(), pattern=FULL)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="d_state"):
        MambaConfig(d_state=0)
    with pytest.raises(ValueError, match="dt_min"):
        MambaConfig(dt_min=0.2, dt_max=0.1)


class _Bidirectional:
    """A test-only objective that needs the full (bidirectional) pattern."""

    @hookimpl
    def genloom_objectives(self):
        return [records.objective("test-bidirectional", f"{__name__}:_build_bidirectional", summary="needs FULL")]


def _build_bidirectional(config, ctx):
    from genloom.core.model import Objective

    objective = Objective()
    objective.pattern = FULL
    return objective


def _tiny_config(**top):
    from genloom.core.config import compose

    base = dict(
        seed=0, logger="none",
        tokenizer={"name": "bytes"}, head={"name": "lm"},
        backbone={"name": "mamba", "d_model": 16, "n_layers": 2, "d_state": 4},
        objective={"name": "next-token"}, decoder={"name": "greedy"},
    )
    base.update(top)
    return compose(base=base)


def test_assembly_refuses_a_bidirectional_objective():
    from genloom.core.config import validate
    from genloom.core.errors import ConfigError
    from genloom.core.model import assemble
    from genloom.core.plugins import registry_with

    registry = registry_with(_Bidirectional())
    validated = validate(_tiny_config(objective={"name": "test-bidirectional"}), registry)
    with pytest.raises(ConfigError, match="cannot serve the 'full'"):
        assemble(validated, registry, data=False)


def test_greedy_generation_with_state_equals_recomputing_from_scratch():
    """The core's decoding loop with the Mamba state (left-padded prompts of different lengths)
    gives the same greedy tokens as re-running the full sequence at every step."""
    from genloom.core.config import validate
    from genloom.core.generation import run
    from genloom.core.model import assemble

    torch.manual_seed(0)
    built = assemble(validate(_tiny_config()), data=False)
    model = built.model.double().eval()
    prompts = [[100, 101, 102, 103, 104], [50, 51]]
    result = run(model, prompts, built.decoder, max_new_tokens=8, seed=0)
    with torch.no_grad():
        for prompt, generated in zip(prompts, result.ids):
            seq = list(prompt)
            for _ in range(len(generated)):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            assert seq[len(prompt):] == generated
    assert all(len(g) == 8 for g in result.ids)


def test_shipped_config_validates_and_trains_a_step():
    from genloom.core.config import load
    from genloom.core.model import assemble

    validated = load(ROOT / "configs" / "mamba.yaml", ["backbone.d_model=32", "backbone.n_layers=1"])
    assert validated.components["backbone"].record.name == "mamba"
    torch.manual_seed(0)
    built = assemble(validated, data=False)
    ids = torch.randint(0, 256, (2, 33))
    out = built.model.loss({"ids": ids})
    out["loss"].backward()
    assert math.isfinite(out["loss"].item()) and abs(out["loss"].item() - math.log(built.ctx.vocab_size)) < 1.0
    assert built.model.backbone.layers[0].mixer.A_log.grad is not None
