"""Helpers shared by the tests of recurrent / convolutional backbones (float64 exactness checks,
per-row rollback, the shipped config trained and decoded on the state)."""

from __future__ import annotations

import torch

from genloom.testing import build as build_component
from genloom.testing import check_decoder, check_model_config, tiny_model
from genloom.toolkit.recurrent import greedy_matches_recomputation

PROMPTS = [[100, 101, 102, 103, 104], [50, 51]]
SAMPLING_AND_BEAM = ({"name": "sampling"}, {"name": "beam", "num_beams": 2})


def build_double(node: dict, **overrides):
    """The backbone of config ``node`` (plus ``overrides``), built through the registry, in float64
    eval mode."""
    model, _ = build_component("backbone", {**node, **overrides})
    return model.double().eval()


def inputs(batch=2, length=13, width=16, seed=1):
    """Seeded float64 hidden states (batch, length, width)."""
    return torch.randn(batch, length, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def err(a, b):
    return (a - b).abs().max().item()


def assert_rollback_per_row(model, h, alt, kept, key: str, layers=(1,), tol: float = 1e-12):
    """Advance every row by ``h[:, :6]`` then ``alt[:, 6:6 + len]``, roll row b back to 6 + kept[b]
    tokens, and compare each of ``layers``' state ``key`` with a row fed only those tokens."""
    length = max(kept) if kept else 0
    state = model.init_state(h.shape[0])
    model(h[:, :6], state=state)
    model(alt[:, 6 : 6 + length], state=state)
    state.rollback(6 + torch.tensor(kept))
    for b, k in enumerate(kept):
        row = model.init_state(1)
        model(h[b : b + 1, :6], state=row)
        if k:
            model(alt[b : b + 1, 6 : 6 + k], state=row)
        for i in layers:
            assert err(state.layers[i][key][b], row.layers[i][key][0]) < tol
    return state


def trains_and_decodes_on_state(config, overrides, backbone: str | None = None, prepare=None, max_new_tokens: int = 6, decoders=SAMPLING_AND_BEAM, decoder_tokens: int = 4):
    """The shipped config takes a training step (``check_model_config``, backbone class
    ``backbone``); a float64 tiny model (after ``prepare(built)``) decodes greedily on its state
    exactly as recomputation does, and ``decoders`` run on it."""
    torch.manual_seed(0)
    built = check_model_config(config, overrides, batch={"ids": torch.randint(0, 256, (2, 17))})
    if backbone is not None:
        assert type(built.model.backbone).__name__ == backbone
    built = tiny_model(config, overrides)
    built.model.double()
    if prepare is not None:
        prepare(built)
    greedy_matches_recomputation(built, PROMPTS, max_new_tokens=max_new_tokens)
    for decoder in decoders:
        check_decoder(built, decoder, max_new_tokens=decoder_tokens)
    return built
