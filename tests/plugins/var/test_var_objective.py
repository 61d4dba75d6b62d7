"""The next-scale objective: block-causal pattern over scales, causality across scales, class dropout."""

from __future__ import annotations

import pytest
import torch
from var_helpers import LENGTHS, L, build_tiny, random_ids

from genloom.core.pattern import AttentionPattern
from genloom.testing import check_objective


@pytest.fixture(scope="module")
def built():
    return build_tiny()


def explicit_block_causal_mask() -> torch.Tensor:
    scale_of = []
    for k, n in enumerate(LENGTHS):
        scale_of += [k] * n
    mask = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for kv in range(L):
            mask[q, kv] = scale_of[kv] <= scale_of[q]
    return mask


def test_pattern_is_a_block_causal_value_over_scales(built):
    pattern = built.model.objective.pattern
    assert isinstance(pattern, AttentionPattern)
    assert pattern.kind == "block_causal" and pattern.block_lengths == (1, 4, 9, 16)
    assert torch.equal(pattern.dense(L), explicit_block_causal_mask())
    # with a cache: the queries of scale 3 (positions 5..13) see scales 1-3 and nothing later
    assert torch.equal(pattern.dense(9, L, q_offset=5), explicit_block_causal_mask()[5:14])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_logits_of_scale_k_ignore_tokens_of_scales_k_and_finer(built, k):
    model, objective = built.model, built.model.objective
    g = torch.Generator().manual_seed(k)
    ids = random_ids(3, 32, g)
    changed = [t.clone() if j < k else torch.randint(32, t.shape, generator=g) for j, t in enumerate(ids)]
    labels = torch.tensor([0, 4, 9])
    with torch.no_grad():
        a = objective.logits(model, ids, labels)
        b = objective.logits(model, changed, labels)
    end = sum(LENGTHS[:k + 1])
    assert a.shape == (3, L, 32)
    torch.testing.assert_close(b[:, :end], a[:, :end], atol=1e-6, rtol=0)
    if k + 1 < len(LENGTHS):  # the finer scales do read them (the check above is not vacuous)
        assert (b[:, end:] - a[:, end:]).abs().max() > 1e-3


def test_class_token_conditions_every_scale(built):
    model, objective = built.model, built.model.objective
    ids = random_ids(2, 32, torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = objective.logits(model, ids, torch.tensor([1, 1]))
        b = objective.logits(model, ids, torch.tensor([2, 2]))
    for block in (a - b).split(LENGTHS, dim=1):
        assert block.abs().max() > 1e-4


def test_model_forward_on_a_label_is_the_scale_one_prediction(built):
    model, objective = built.model, built.model.objective
    labels = torch.tensor([3, 7])
    ids = random_ids(2, 32, torch.Generator().manual_seed(6))
    with torch.no_grad():
        first = model(labels[:, None])  # head.embed: the class start token
        full = objective.logits(model, ids, labels)
    torch.testing.assert_close(first[:, 0], full[:, 0], atol=1e-6, rtol=0)


def test_label_dropout_replaces_the_class_by_the_null_class_in_training_only():
    built = build_tiny()
    model, objective = built.model, built.model.objective
    torch.manual_seed(0)
    batch = {"image": torch.rand(4, 1, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 2, 3])}
    null = {"image": batch["image"], "label": torch.full((4,), model.head.null_class)}
    objective.cond_drop = 1.0
    with torch.no_grad():
        objective.train()
        dropped = objective.loss(model, batch)["loss"]
        objective.eval()
        kept = objective.loss(model, batch)["loss"]
        reference = objective.loss(model, null)["loss"]
    assert torch.equal(dropped, reference)
    assert (kept - dropped).abs() > 1e-5


def test_loss_metrics_and_conformance(built):
    batch = {"image": torch.rand(3, 1, 8, 8) * 2 - 1, "label": torch.tensor([0, 5, 9])}
    out = check_objective(built, batch)
    assert float(out["_tokens"]) == 3 * L
    torch.testing.assert_close(out["_nats"] / out["_tokens"], out["loss"].detach())
    mean_by_scale = sum(out[f"nll_scale{k + 1}"] * n for k, n in enumerate(LENGTHS)) / L
    torch.testing.assert_close(mean_by_scale, out["loss"].detach())
    # the frozen tokenizer gets no gradient from the transformer's loss
    assert all(p.grad is None for p in built.model.tokenizer.parameters())
