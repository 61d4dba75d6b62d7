"""PFN: predictions are invariant to permuting the context, a query's output does not depend on the other
queries (query-query attention masked), the bar output integrates to 1, and a trained PFN approximates the
exact GP posterior mean on held-out functions."""

from pathlib import Path

import pytest
import torch

from genloom.plugins.pfn.model import posterior_agreement
from genloom.testing import check_model_config, tiny_model
from genloom.toolkit.amortized import ContextQueryPattern, GPPrior

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "pfn.yaml"
SMALL = ["backbone.d_model=16", "backbone.n_layers=2", "backbone.n_heads=2", "head.n_bars=16"]


def _random_model(overrides=()):
    """A float64 model with weights large enough that attention is far from uniform (a fresh model's
    near-zero scores would make every mechanism look invariant)."""
    model = tiny_model(CONFIG, SMALL + list(overrides), seed=0).model.double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.fixture(scope="module")
def untrained():
    model = _random_model()
    x, y, _ = GPPrior().sample(3, 14, generator=torch.Generator().manual_seed(0))
    return model, x, y


def _logits(model, x, y, c, pattern=None):
    return model.objective.logits(model, x[:, :c], y[:, :c], x[:, c:], pattern=pattern)


def test_predictions_are_invariant_to_permuting_the_context(untrained):
    model, x, y = untrained
    perm = torch.cat([torch.randperm(8, generator=torch.Generator().manual_seed(1)), torch.arange(8, 14)])
    base = _logits(model, x, y, 8)
    assert (base - _logits(model, x[:, perm], y[:, perm], 8)).abs().max() < 1e-6
    assert base.abs().max() > 1e-3  # the outputs are not trivially constant


def test_rotary_positions_break_context_permutation_invariance():
    """The broken variant: a backbone with positions sees the context as a sequence."""
    model = _random_model(["backbone.rope=true"])
    x, y, _ = GPPrior().sample(3, 14, generator=torch.Generator().manual_seed(0))
    perm = torch.cat([torch.randperm(8, generator=torch.Generator().manual_seed(1)), torch.arange(8, 14)])
    assert (_logits(model, x, y, 8) - _logits(model, x[:, perm], y[:, perm], 8)).abs().max() > 1e-4


@torch.no_grad()
def _query_dependence(model, x, y, pattern=None):
    """max change of query 0's logits when the other queries' inputs change (and when they are dropped)."""
    c = 8
    base = _logits(model, x, y, c, pattern)[:, 0]
    moved = x.clone()
    moved[:, c + 1:] = torch.rand_like(moved[:, c + 1:], dtype=x.dtype) * 2 - 1
    other = _logits(model, moved, y, c, pattern)[:, 0]
    alone = model.objective.logits(model, x[:, :c], y[:, :c], x[:, c:c + 1], pattern=pattern)[:, 0] if pattern is None else other
    return max(float((base - other).abs().max()), float((base - alone).abs().max()))


def test_a_query_is_unaffected_by_the_other_queries(untrained):
    model, x, y = untrained
    assert _query_dependence(model, x, y) < 1e-6


def test_unmasking_query_query_attention_makes_queries_depend_on_each_other(untrained):
    model, x, y = untrained
    assert _query_dependence(model, x, y, ContextQueryPattern(n_context=8, queries_see_queries=True)) > 1e-4


def test_the_bar_output_integrates_to_one(untrained):
    model, x, y = untrained
    bars = model.head.bars
    logits = _logits(model, x, y, 8)[0, :3]
    lo, hi = float(bars.borders[0]), float(bars.borders[-1])
    grid = torch.linspace(lo - 0.5, hi + 0.5, 20001, dtype=torch.float64)
    for row in logits:
        dens = bars.density(row[None].expand(len(grid), -1), grid)
        assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=2e-3)


def test_runnable_config_assembles_and_trains_a_batch():
    built = check_model_config(CONFIG, SMALL)
    assert built.ctx.y_scale == pytest.approx((1 + 0.01) ** 0.5)


def test_bad_context_sizes_are_config_errors():
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="max_context"):
        tiny_model(CONFIG, SMALL + ["objective.max_context=40"])
    with pytest.raises(ConfigError, match="max_context"):
        tiny_model(CONFIG, SMALL + ["objective.min_context=5", "objective.max_context=3"])


@pytest.mark.slow
def test_a_trained_pfn_approximates_the_exact_gp_posterior_mean():
    torch.manual_seed(0)
    built = tiny_model(CONFIG, data=True, seed=0)
    model, data = built.model, built.data
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(600):
        x, y, _ = data.prior.sample(32, 40, generator=gen, dtype=torch.float32)
        loss = model.loss({"x": x, "y": y})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y, _ = data.tasks("test", 128)
    figures = posterior_agreement(model.eval(), data.prior, x, y, context=10)
    print(figures)
    # the PFN's mean is much closer to the exact posterior mean than the posterior mean's own spread
    assert figures["mse_to_posterior_mean"] < 0.25 * figures["posterior_mean_variance"]  # measured: 0.066 vs 0.999
    # its NLL is far below the prior's (0.5 log(2 pi e 1.01) = 1.42); the gap to the exact posterior is
    # mostly the bars' resolution where the posterior is narrower than a bar
    assert figures["nll_pfn"] < 0.6 and figures["nll_pfn"] < figures["nll_exact"] + 0.6  # measured (600 steps): 0.23 vs -0.24
