"""ViR retention: parallel == recurrent == chunkwise (the op's three backends and the paper's
parallel formula written out), the incremental-state contract, padding, decoding, config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core import kernels
from genloom.plugins.vir_retention import ViRConfig
from genloom.plugins.vir_retention.model import head_decays, parallel_retention
from genloom.testing import check_backbone, check_decoder, tiny_model

from recurrent_helpers import build_double, err, inputs, trains_and_decodes_on_state

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "vir-retention.yaml"
SMALL = ["backbone.d_model=16", "backbone.n_layers=2", "backbone.n_heads=2"]
FORMS = ["reference", "parallel", "chunkwise"]


NODE = {"name": "vir-retention", "d_model": 16, "n_layers": 2, "n_heads": 2}


def build(**overrides):
    return build_double(NODE, **overrides)


def test_retention_forms_agree_on_the_whole_backbone_outputs_and_gradients():
    """Recurrent (reference), parallel (masked decay matrix) and chunkwise forms of the op give the
    same backbone outputs and parameter gradients in float64."""
    model = build()
    h = inputs()
    results = {}
    for form in FORMS:
        model.zero_grad()
        with kernels.use("linear_recurrence", form):
            out = model(h)
            (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        results[form] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    ref_out, ref_grads = results["reference"]
    for form in FORMS[1:]:
        out, grads = results[form]
        assert err(out, ref_out) < 1e-10, form
        for name, grad in ref_grads.items():
            assert err(grads[name], grad) < 1e-10, (form, name)


def _layer_inputs(model, h):
    mixer = model.layers[0].retention
    q, k, v = mixer.projections(model.layers[0].norm1(h))
    return mixer, q, k, v


@pytest.mark.parametrize("form", FORMS)
def test_op_forms_equal_the_papers_parallel_retention_formula(form):
    """Re(q~ exp(G_n - G_m) conj k~) v through the op == ((Q_rot K_rot^T) * D) V in real arithmetic."""
    model = build()
    mixer, q, k, v = _layer_inputs(model, inputs(length=17))
    with torch.no_grad(), kernels.use("linear_recurrence", form):
        o, _ = kernels.call("linear_recurrence", *mixer.recurrence_inputs(q, k, v, None))
        expected = parallel_retention(q, k, v, mixer.gamma.double(), mixer.theta.double())
    assert err(o.real, expected) < 1e-10


def test_broken_retention_fails_the_equivalence():
    """Broken variants the check must catch: keys rotated the wrong way (no conjugate), and the
    decay mask off by one step (gamma^(n-m+1))."""
    model = build()
    mixer, q, k, v = _layer_inputs(model, inputs(length=17))
    gamma, theta = mixer.gamma.double(), mixer.theta.double()
    with torch.no_grad():
        expected = parallel_retention(q, k, v, gamma, theta)
        qc, kc, vc, g = mixer.recurrence_inputs(q, k, v, None)
        o, _ = kernels.call("linear_recurrence", qc, kc.conj(), vc, g)
        assert err(o.real, expected) > 1e-3
        # gamma^(n-m+1): the decay applied once too often
        off_by_one = parallel_retention(q * gamma[None, :, None, None], k, v, gamma, theta)
        assert err(off_by_one, expected) > 1e-3


def test_multi_scale_decays_are_retnets():
    gammas = head_decays(4)
    assert abs(gammas[0].item() - (1 - 1 / 32)) < 1e-12 and abs(gammas[-1].item() - (1 - 1 / 512)) < 1e-12
    assert bool((gammas[1:] > gammas[:-1]).all())


def test_backbone_contract_and_a_single_head_without_rotation():
    check_backbone({"name": "vir-retention", "d_model": 16, "n_layers": 2, "n_heads": 2}, length=11, chunks=(1, 3, 2, 5), tol=1e-10)
    check_backbone({"name": "vir-retention", "d_model": 8, "n_layers": 1, "n_heads": 1, "rotation": False, "value_factor": 1}, length=7, chunks=(2, 4), tol=1e-10)


def test_state_is_constant_size_rollback_per_row_and_padding():
    model = build()
    h, alt = inputs(batch=3, length=12), inputs(batch=3, length=12, seed=5)
    with torch.no_grad():
        state = model.init_state(3)
        shapes = [tuple(layer["S"].shape) for layer in state.layers]
        model(h[:, :6], state=state)
        model(alt[:, 6:11], state=state)
        assert [tuple(layer["S"].shape) for layer in state.layers] == shapes == [(3, 2, 4, 16)] * 2
        keep = torch.tensor([0, 2, 5])
        state.rollback(6 + keep)
        for b in range(3):
            row = model.init_state(1)
            model(h[b : b + 1, :6], state=row)
            if int(keep[b]):
                model(alt[b : b + 1, 6 : 6 + int(keep[b])], state=row)
            for i in range(2):
                assert err(state.layers[i]["S"][b], row.layers[i]["S"][0]) < 1e-12
        with pytest.raises(ValueError, match="most recent advance"):
            state.rollback(5)
        # left padding: a padded row equals the row alone, with and without a state
        valid = torch.ones(3, 12, dtype=torch.bool)
        valid[0, :4] = False
        full = model(h, valid=valid)
        alone = model(h[:1, 4:])
        assert err(full[0, 4:], alone[0]) < 1e-10
        state = model.init_state(3)
        stepped = model(h, valid=valid, state=state)
        assert err(stepped[0, 4:], alone[0]) < 1e-10 and state.lengths.tolist() == [8, 12, 12]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_heads"):
        ViRConfig(d_model=16, n_heads=3)
    with pytest.raises(ValueError, match="must be even"):
        ViRConfig(d_model=12, n_heads=4)
    with pytest.raises(ValueError, match="value_factor"):
        ViRConfig(value_factor=0)


def test_assembly_refuses_a_bidirectional_pattern():
    from genloom.core.pattern import FULL

    with pytest.raises(ValueError, match="causal"):
        build()(inputs(), pattern=FULL)


def test_shipped_config_trains_and_every_decoder_runs_on_the_state():
    trains_and_decodes_on_state(CONFIG, SMALL, backbone="ViR")


def test_speculative_decoding_rolls_the_state_back_inside_the_loop():
    """The speculative decoder verifies gamma drafts in one target pass and, on a rejection, rolls
    the target's recurrent state back inside that advance: it runs and reproduces under a seed."""
    node = {"name": "vir-retention", "d_model": 16, "n_layers": 1, "n_heads": 2}
    config = {"tokenizer": {"name": "ids", "vocab_size": 7}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False}, "backbone": node, "objective": {"name": "next-token"}}
    torch.manual_seed(0)
    built = tiny_model(base=config)
    result = check_decoder(built, {"name": "speculative", "draft": config, "gamma": 3}, max_new_tokens=8)
    assert result.metrics.forward_passes["draft"] > 0
