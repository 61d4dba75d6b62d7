"""Prophet: infinite thresholds reproduce the baseline exactly; finite ones never take more steps."""

from __future__ import annotations

import math

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.prophet.decoder import answer_gap, staged_threshold, top2_gap
from genloom.testing import check_decoder, tiny_model


TINY = {
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
    "objective": {"name": "radd"},
}
PROMPTS = [[10, 11, 12, 13], [20], [30, 31]]
INF = float("inf")


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return tiny_model(base=TINY)


def _run(built, node, max_new_tokens=12, seed=0, prompts=PROMPTS):
    dec = built.ctx.build("decoder", node)
    return run(built.model, prompts, dec, max_new_tokens=max_new_tokens, seed=seed), dec


def test_contract(built):
    check_decoder(built, "prophet")
    check_decoder(built, {"name": "prophet", "thresholds": [0.0, 0.0, 0.0]})


@pytest.mark.parametrize("options", [{}, {"steps": 6}, {"steps": 4, "block_length": 6}, {"temperature": 1.0, "steps": 5}])
def test_infinite_threshold_is_the_baseline_sampler(built, options):
    base, _ = _run(built, {"name": "masked-diffusion", **options}, seed=2)
    prophet, dec = _run(built, {"name": "prophet", "thresholds": [INF, INF, INF], **options}, seed=2)
    assert prophet.ids == base.ids
    assert prophet.metrics.forward_passes == base.metrics.forward_passes
    assert prophet.metrics.steps == base.metrics.steps
    assert (dec.stats["early_commit_step"] == -1).all()


@pytest.mark.parametrize("gap_space", ["probability", "logit"])
def test_lower_thresholds_never_take_more_steps(built, gap_space):
    """Trajectories agree until the first early commit, so a uniformly lower threshold can only
    commit earlier: steps are non-increasing and never exceed the baseline's."""
    scale = 1.0 if gap_space == "probability" else 8.0
    base, _ = _run(built, {"name": "masked-diffusion"})
    previous = base.metrics.forward_passes["target"]
    previous_rows = torch.full((len(PROMPTS),), previous)
    for tau in (0.9, 0.5, 0.2, 0.05, 0.0):
        res, dec = _run(built, {"name": "prophet", "gap_space": gap_space, "thresholds": [scale * tau] * 3})
        calls = res.metrics.forward_passes["target"]
        rows = dec.stats["row_steps"]
        assert calls <= previous and (rows <= previous_rows).all()
        previous, previous_rows = calls, rows
    assert previous == 1  # threshold 0: everything is decoded by the first step


def test_early_commit_fills_every_mask_with_the_current_prediction(built):
    res, dec = _run(built, {"name": "prophet", "thresholds": [0.0, 0.0, 0.0]}, prompts=[[1, 2, 3]])
    assert res.metrics.forward_passes["target"] == 1
    canvas = torch.tensor([[1, 2, 3] + [built.ctx.mask_id] * 12])
    with torch.no_grad():
        logits = built.model(canvas, pattern=built.model.objective.pattern, valid=torch.ones_like(canvas, dtype=torch.bool)).double()
    logits[..., built.ctx.mask_id] = -INF
    expect = logits.argmax(-1)[0, 3:].tolist()
    got = res.ids[0]
    assert got == expect[: len(got)]
    assert int(dec.stats["early_commit_step"][0]) == 0


def test_trajectory_matches_baseline_until_the_commit(built):
    """Up to the commit step Prophet is the baseline; at it, every remaining mask gets the current argmax."""
    mask_id = built.ctx.mask_id
    canvases = []
    forward = built.model.forward
    built.model.forward = lambda ids, **kw: (canvases.append(ids.clone()), forward(ids, **kw))[1]
    base, _ = _run(built, {"name": "masked-diffusion"}, prompts=[[7, 8]])
    built.model.forward = forward
    _, probe = _run(built, {"name": "prophet", "gap_space": "logit", "thresholds": [INF] * 3}, prompts=[[7, 8]])
    gaps = probe.stats["gaps"][0]
    tau = float(gaps[4])  # a threshold that the gap clears at step 4 at the latest
    res, dec = _run(built, {"name": "prophet", "gap_space": "logit", "thresholds": [tau] * 3}, prompts=[[7, 8]])
    step = int(dec.stats["early_commit_step"][0])
    assert step == int((gaps >= tau).nonzero()[0]) <= 4
    assert res.metrics.forward_passes["target"] == step + 1 < base.metrics.forward_passes["target"]
    before = canvases[step]  # the baseline's canvas when Prophet commits
    out = torch.tensor([[7, 8] + res.ids[0]])
    decoded = before != mask_id
    assert torch.equal(out[decoded], before[decoded])
    with torch.no_grad():
        logits = forward(before, pattern=built.model.objective.pattern, valid=torch.ones_like(before, dtype=torch.bool)).double()
    logits[..., mask_id] = -INF
    assert torch.equal(out[~decoded], logits.argmax(-1)[~decoded])


def test_gap_and_threshold_helpers():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1, 1.0], [0.4, 0.35, 0.25, 1.0]]]))
    gap = top2_gap(logits, mask_id=3)  # the mask column is excluded
    assert torch.allclose(gap, torch.tensor([[0.5, 0.05]], dtype=torch.float64))
    lgap = top2_gap(logits, mask_id=3, space="logit")
    assert torch.allclose(lgap, torch.tensor([[math.log(3.5), math.log(0.4 / 0.35)]], dtype=torch.float64))
    masked = torch.tensor([[True, True]])
    answer = torch.tensor([[False, True]])
    assert answer_gap(gap, masked, answer).item() == pytest.approx(0.05)
    assert answer_gap(gap, masked, answer.logical_not() & False).item() == pytest.approx(0.275)  # no answer left: all masked
    assert answer_gap(gap, masked, torch.ones_like(answer), "min").item() == pytest.approx(0.05)
    assert math.isnan(answer_gap(gap, torch.zeros_like(masked), answer).item())
    assert staged_threshold(0.0, (3, 2, 1), (0.33, 0.67)) == 3
    assert staged_threshold(0.5, (3, 2, 1), (0.33, 0.67)) == 2
    assert staged_threshold(0.67, (3, 2, 1), (0.33, 0.67)) == 1


def test_config_validation():
    from genloom.plugins.prophet import ProphetConfig

    with pytest.raises(ValueError, match="thresholds"):
        ProphetConfig(thresholds=(1.0, 2.0))
    with pytest.raises(ValueError, match="progress_boundaries"):
        ProphetConfig(progress_boundaries=(0.7, 0.3))
