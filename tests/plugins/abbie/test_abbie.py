"""AbbIE: parameters independent of r, r = 1 is the standard transformer exactly, causal at every
r, a model trained at r = 2 runs at any r (and decodes with every decoder)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from genloom.core.pattern import FULL
from genloom.plugins.abbie import AbbIEConfig
from genloom.testing import build, check_backbone, check_decoder, check_model_config, tiny_model
from genloom.toolkit.recurrent import greedy_matches_recomputation

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "abbie.yaml"
BLOCK = {"name": "transformer", "n_heads": 2}
NODE = {"name": "abbie", "d_model": 16, "head_layers": 1, "body_layers": 2, "tail_layers": 1, "block": BLOCK}
SMALL = ["backbone.d_model=16", "backbone.block.n_heads=2"]


def abbie(**overrides):
    return build("backbone", {**NODE, **overrides})[0].double().eval()


def inputs(batch=2, length=12, seed=1):
    return torch.randn(batch, length, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def err(a, b):
    return (a - b).abs().max().item()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_does_not_depend_on_r_and_unshared_weights_would():
    counts = {r: n_params(abbie(iterations=r)) for r in (1, 2, 5)}
    assert len(set(counts.values())) == 1
    unshared = abbie(iterations=3)  # broken variant: a separate copy of the body per iteration
    unshared.extra = torch.nn.ModuleList(copy.deepcopy(unshared.body) for _ in range(2))
    assert n_params(unshared) != counts[1]


def test_r_equal_1_is_the_standard_transformer_exactly():
    model = abbie(iterations=1)
    standard = build("backbone", {**BLOCK, "d_model": 16, "n_layers": 4})[0].double().eval()
    mapped = {}
    for name, value in standard.state_dict().items():
        if name.startswith("layers."):
            index, rest = name.split(".", 2)[1:]
            part, local = [("head", 0), ("body", 1), ("body", 1), ("tail", 3)][int(index)]
            mapped[f"{part}.layers.{int(index) - local}.{rest}"] = value
        else:
            mapped[f"tail.{name}"] = value
    model.load_state_dict(mapped)
    h = inputs()
    with torch.no_grad():
        assert torch.equal(model(h), standard(h))
        assert err(abbie(iterations=2)(h), standard(h)) > 1e-3


@pytest.mark.parametrize("iterations", [1, 2, 4])
def test_outputs_are_causal_at_every_r(iterations):
    model = abbie(iterations=iterations)
    h = inputs()
    changed = h.clone()
    changed[:, 7:] += 1.0
    with torch.no_grad():
        assert err(model(changed)[:, :7], model(h)[:, :7]) < 1e-12


def test_a_body_iterated_with_bidirectional_attention_is_caught(monkeypatch):
    """Broken variant: running the iterated body with the full pattern leaks the future."""
    model = abbie(iterations=2)
    body_forward = model.body.forward
    monkeypatch.setattr(model.body, "forward", lambda h, pattern=None, state=None, valid=None: body_forward(h, pattern=FULL, state=state, valid=valid))
    h = inputs()
    changed = h.clone()
    changed[:, 7:] += 1.0
    with torch.no_grad():
        assert err(model(changed)[:, :7], model(h)[:, :7]) > 1e-3


@pytest.mark.parametrize("test_iterations", [None, 3])
def test_backbone_contract(test_iterations):
    check_backbone({**NODE, "iterations": 2, "test_iterations": test_iterations}, length=11, chunks=(1, 3, 2, 5), tol=1e-10)


def test_trained_at_r_2_runs_at_any_r_without_shape_changes():
    torch.manual_seed(0)
    built = tiny_model(CONFIG, SMALL)
    model = built.model
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss = model.loss({"ids": ids})["loss"]
        loss.backward()
        optimizer.step()
    model.eval()
    losses = {}
    for r in (1, 2, 3, 6):
        model.backbone.cfg.test_iterations = r
        with torch.no_grad():
            losses[r] = float(model.loss({"ids": ids})["loss"])
        state = model.init_state(2)
        assert len(state.states) == r + 2
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert len(set(round(v, 6) for v in losses.values())) == 4  # r really changes the computation


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="iterations"):
        AbbIEConfig(iterations=0)
    with pytest.raises(ValueError, match="block.n_layers is set by abbie"):
        AbbIEConfig(block={"name": "transformer", "n_layers": 3})


def test_shipped_config_trains_and_every_decoder_runs_on_the_state():
    torch.manual_seed(0)
    check_model_config(CONFIG, SMALL, batch={"ids": torch.randint(0, 256, (2, 17))})
    built = tiny_model(CONFIG, SMALL + ["backbone.test_iterations=3"])
    built.model.double()
    greedy_matches_recomputation(built, [[100, 101, 102, 103, 104], [50, 51]], max_new_tokens=5)
    check_decoder(built, {"name": "beam", "num_beams": 2}, max_new_tokens=3)
    config = {"tokenizer": {"name": "ids", "vocab_size": 7}, "head": {"name": "lm", "init_std": 0.5, "tie_weights": False}, "backbone": {**NODE, "d_model": 16}, "objective": {"name": "next-token"}}
    target = tiny_model(base=config)
    check_decoder(target, {"name": "speculative", "draft": config, "gamma": 3}, max_new_tokens=6)
