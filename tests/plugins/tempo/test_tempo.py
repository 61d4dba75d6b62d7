"""TEMPO: the decomposition is exact (trend + seasonal + residual == window), the prompt pool
returns the top-k prompts by cosine similarity of the query with the keys, only the selected
prompts and keys get gradient, and the frozen LM gets none."""

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from genloom.plugins.tempo.prompt_pool import PromptPool
from genloom.testing import tiny_model
from genloom.toolkit.forecasting_patches import decompose

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "tempo.yaml"


def test_the_decomposition_is_exact_periodic_and_centred():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(36, dtype=torch.float64)[None, :, None]
    x = 0.1 * t + torch.sin(2 * torch.pi * t / 12) + 0.2 * torch.randn(3, 36, 2, generator=g, dtype=torch.float64)
    trend, seasonal, residual = decompose(x, period=12, trend_kernel=13)
    assert (trend + seasonal + residual - x).abs().max() < 1e-6
    assert torch.allclose(seasonal[:, 12:], seasonal[:, :-12])  # periodic
    assert seasonal[:, :12].mean(1).abs().max() < 1e-12  # centred over a period
    assert (seasonal[:, :12, 0] - torch.sin(2 * torch.pi * t[0, :12, 0] / 12)).abs().max() < 0.4  # finds the season (edges: replicated ends bias the trend)
    # broken variant: a residual taken against a differently smoothed trend no longer sums back
    wrong = x - decompose(x, 12, 11)[0] - seasonal
    assert (trend + seasonal + wrong - x).abs().max() > 1e-3


def test_the_pool_returns_the_top_k_prompts_by_cosine_similarity():
    torch.manual_seed(0)
    pool = PromptPool(6, 2, 4, top_k=2)
    with torch.no_grad():
        pool.keys.mul_(torch.tensor([0.1, 5.0, 1.0, 3.0, 0.2, 2.0])[:, None])  # keys of very different norms
    query = torch.randn(32, 4)
    prompts, indices, _ = pool(query)
    cosine = torch.stack([torch.stack([F.cosine_similarity(q, k, dim=0) for k in pool.keys]) for q in query])
    expected = cosine.argsort(dim=1, descending=True)[:, :2]
    assert torch.equal(indices, expected)
    assert torch.equal(prompts, torch.stack([torch.cat([pool.prompts[i] for i in row]) for row in expected]))
    # broken variant: retrieval by dot product favours long keys and picks other prompts
    dot = (query @ pool.keys.T).topk(2, dim=1).indices
    assert not torch.equal(dot, indices)


@pytest.fixture(scope="module")
def built(frozen_lm_run):
    torch.manual_seed(0)
    return tiny_model(CONFIG, [f"backbone.lm_run={frozen_lm_run}", "backbone.lookback=36", "backbone.horizon=12", "tokenizer.horizon=12"])


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(48, dtype=torch.float32)
    series = torch.sin(2 * torch.pi * t / 12)[None, :, None] + 0.05 * t[None, :, None] + 0.3 * torch.randn(2, 48, 1, generator=g)
    return {"x": series[:, :36], "y": series[:, 36:]}


def test_only_the_selected_prompts_and_keys_get_gradient_and_the_lm_none(built):
    model = built.model
    model.zero_grad(set_to_none=True)
    model.train()
    out = model.loss(_batch())
    out["loss"].backward()
    selected = torch.unique(torch.cat([s.flatten() for s in model.backbone.last_selection]))
    pool = model.backbone.pool
    rows_with_grad = torch.nonzero(pool.prompts.grad.abs().flatten(1).sum(1)).flatten()
    keys_with_grad = torch.nonzero(pool.keys.grad.abs().sum(1)).flatten()
    assert torch.equal(rows_with_grad, selected) and torch.equal(keys_with_grad, selected)
    assert len(selected) < pool.prompts.shape[0]  # some prompts were not chosen (and got no gradient)
    assert all(p.grad is None for p in model.backbone.lm.parameters())
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.backbone.embeddings.parameters())
    assert out["key_matching"] > 0


def test_a_soft_pool_would_give_every_prompt_gradient(built):
    # broken variant: prompts mixed by softmax weights over the whole pool instead of gathered by top-k
    pool = built.model.backbone.pool
    pool.zero_grad(set_to_none=True)
    query = torch.randn(4, pool.keys.shape[1])
    mixed = torch.einsum("bp,pld->bld", torch.softmax(pool.similarity(query), -1), pool.prompts)
    mixed.sum().backward()
    assert (pool.prompts.grad.abs().flatten(1).sum(1) > 0).all()
    pool.zero_grad(set_to_none=True)


def test_runnable_config_assembles_and_trains_a_batch(frozen_lm_run):
    from genloom.testing import check_model_config

    built = check_model_config(CONFIG, [f"backbone.lm_run={frozen_lm_run}"])
    x, y = built.data.load("test").tensors()
    with torch.no_grad():
        assert built.model.objective.predict(built.model, x[:3]).shape == y[:3].shape
