"""The conformance kit catches broken backbones, names what is wrong, and leaves the global random state alone."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from genloom.core.plugins import registry_with
from genloom.testing import build, check_backbone, check_head, check_objective, tiny_model

HERE = Path(__file__).resolve().parent / "extension"


@pytest.fixture(scope="module")
def registry():
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(HERE))
    yield registry_with(importlib.import_module("kit_backbones"), entry_points=False)
    mp.undo()


def test_a_correct_recurrent_backbone_passes(registry):
    check_backbone({"name": "ema", "d_model": 8}, registry=registry)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ema-noop-reorder", r"after reorder\(.*\) state.lengths is"),
        ("ema-lengths-only-reorder", r"after state.reorder\(.*\) row \d should continue old row \d.*is reorder wrong"),
        ("ema-ignores-valid", r"left-padded prefill.*is `valid` ignored"),
    ],
)
def test_broken_backbones_fail_with_a_message(registry, name, message):
    with pytest.raises(AssertionError, match=message):
        check_backbone({"name": name, "d_model": 8}, registry=registry)


def test_the_kit_gives_the_global_random_state_back(registry):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check_backbone({"name": "ema", "d_model": 8}, registry=registry)
    build("backbone", {"name": "ema"}, registry=registry, seed=5)
    check_head({"name": "lm"}, vocab_size=11, d_model=8)
    built = tiny_model(base={"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "objective": {"name": "next-token"},
                             "backbone": {"name": "transformer", "d_model": 8, "n_layers": 1, "n_heads": 2, "dropout": 0.1}}, seed=0)
    check_objective(built, {"ids": torch.arange(20).view(2, 10), "mask": torch.ones(2, 9, dtype=torch.bool)})  # dropout draws
    assert torch.equal(torch.get_rng_state(), before)


def test_tiny_model_seed_is_reproducible_and_leaves_the_global_state_alone():
    cfg = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 8, "n_layers": 1, "n_heads": 2}}
    before = torch.get_rng_state()
    a, b = tiny_model(base=cfg, seed=4), tiny_model(base=cfg, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
