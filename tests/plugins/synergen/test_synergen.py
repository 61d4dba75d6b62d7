"""SynerGen: the time-aware rotary attention is invariant to shifting all timestamps (and not to a
non-uniform time change), it is causal, the InfoNCE part equals a hand-computed cross-entropy, and a
few dozen training steps lower the joint loss."""

import math
from pathlib import Path

import pytest
import torch

from genloom.plugins.synergen.objective import info_nce
from genloom.testing import check_model_config, tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "synergen.yaml"
SMALL = ["data.n_items=16", "data.n_clusters=4", "data.seq_len=8", "tokenizer.vocab_size=16", "backbone.d_model=16", "backbone.time_planes=2"]


@pytest.fixture(scope="module")
def built():
    b = tiny_model(CONFIG, SMALL, seed=0, data=True)
    b.model.double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights large enough that attention is far from uniform
        for p in b.model.backbone.parameters():
            if p.dim() > 1:
                p.copy_(0.4 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return b


def _batch(b, n=4):
    ds = b.data.load("val", b.model.tokenizer, b.ctx)
    batch = b.data.collate([ds[i] for i in range(n)])
    batch["times"] = batch["times"].double()
    return batch


def _logits(b, ids, times):
    h = b.model.head.embed(ids)
    return b.model.backbone.attention_logits(h, times=times), b.model.backbone(h, times=times)


def test_logits_depend_only_on_time_differences(built):
    batch = _batch(built)
    ids, times = batch["ids"], batch["times"]
    with torch.no_grad():
        logits, out = _logits(built, ids, times)
        shifted, out_shifted = _logits(built, ids, times + 123.456)
        warped, _ = _logits(built, ids, times + 0.5 * (times - times[:, :1]) ** 1.5)  # a non-uniform change
    for a, s, w in zip(logits, shifted, warped):
        assert torch.allclose(a, s, atol=1e-10, rtol=0)
        assert (a - w).abs().max() > 1e-3
    assert torch.allclose(out, out_shifted, atol=1e-10, rtol=0)
    # broken variant: queries turn with the absolute time, keys do not: shifts change the logits
    backbone = built.model.backbone
    backbone.absolute_time = True
    try:
        with torch.no_grad():
            broken, _ = _logits(built, ids, times)
            broken_shifted, _ = _logits(built, ids, times + 123.456)
    finally:
        backbone.absolute_time = False
    assert max(float((a - s).abs().max()) for a, s in zip(broken, broken_shifted)) > 1e-3


def test_time_planes_zero_ignores_time_entirely():
    b = tiny_model(CONFIG, SMALL + ["backbone.time_planes=0"], seed=0, data=True)
    b.model.double().eval()
    batch = _batch(b)
    with torch.no_grad():
        _, out = _logits(b, batch["ids"], batch["times"])
        _, warped = _logits(b, batch["ids"], batch["times"] ** 1.3)
    assert torch.allclose(out, warped, atol=1e-10, rtol=0)


def test_causal(built):
    batch = _batch(built)
    ids, times = batch["ids"].clone(), batch["times"].clone()
    t = 4
    later_ids, later_times = ids.clone(), times.clone()
    later_ids[:, t + 1:] = (later_ids[:, t + 1:] + 5) % 16
    later_times[:, t + 1:] += torch.rand(later_times[:, t + 1:].shape, dtype=torch.float64) * 50
    with torch.no_grad():
        _, out = _logits(built, ids, times)
        _, out_later = _logits(built, later_ids, later_times)
    assert torch.allclose(out[:, : t + 1], out_later[:, : t + 1], atol=1e-12, rtol=0)
    assert (out[:, t + 1:] - out_later[:, t + 1:]).abs().max() > 1e-3  # the later outputs do see the change


def test_info_nce_is_the_hand_computed_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    q, e = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64)
    tau = 0.5
    total = 0.0
    for n in range(3):
        sims = [float(q[n] @ e[m] / (q[n].norm() * e[m].norm()) / tau) for m in range(3)]
        total += -(sims[n] - math.log(sum(math.exp(s) for s in sims)))
    assert abs(float(info_nce(q, e, tau)) - total / 3) < 1e-12
    # and inside the objective: its reported retrieval term is info_nce of the model's own queries
    b = tiny_model(CONFIG, SMALL, seed=0, data=True)
    b.model.double()
    batch = _batch(b, 2)
    torch.manual_seed(0)
    out = b.model.loss(batch)
    with torch.no_grad():
        h = b.model.objective.queries(b.model, batch)
        items = b.model.head.embed(batch["ids"][:, 1:].reshape(-1))
        expected = info_nce(h.reshape(-1, h.shape[-1]), items, b.model.objective.config.temperature)
    assert abs(float(out["retrieval"]) - float(expected)) < 1e-12
    # a broken variant (the wrong label: each query against the next row's item) differs
    assert abs(float(info_nce(q, e.roll(1, 0), tau)) - total / 3) > 1e-3


def test_a_few_dozen_steps_lower_the_loss():
    b = tiny_model(CONFIG, SMALL, seed=0, data=True)
    ds = b.data.load("train", b.model.tokenizer, b.ctx)
    opt = torch.optim.Adam(b.model.parameters(), lr=1e-2)
    fixed = b.data.collate([ds[i] for i in range(64, 96)])

    def evaluate():
        torch.manual_seed(0)
        with torch.no_grad():
            return float(b.model.loss(fixed)["loss"])

    before = evaluate()
    for step in range(40):
        batch = b.data.collate([ds[32 * step + i] for i in range(32)])
        loss = b.model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate() < before - 0.2


def test_config_builds_and_trains_one_step():
    check_model_config(CONFIG, SMALL)


def test_bad_config_is_refused():
    from genloom.plugins.synergen import SynergenBackboneConfig, SyntheticBehaviourConfig

    with pytest.raises(ValueError, match="time_planes"):
        SynergenBackboneConfig(d_model=16, n_heads=2, time_planes=5)
    with pytest.raises(ValueError, match="n_clusters"):
        SyntheticBehaviourConfig(n_items=10, n_clusters=4)


def test_generate_recommends_from_the_events_before_the_next_one(built, tmp_path):
    """``genloom generate``'s writer: the ranking is the training query at the last event (asked at the next event's time)."""
    import csv
    from types import SimpleNamespace

    objective = built.model.objective
    path = objective.generate_samples(SimpleNamespace(model=built.model, ctx=built.ctx, run_dir=tmp_path), n=5)
    rows = list(csv.DictReader(path.open()))
    assert path.name == "recommendations.csv" and len(rows) == 5
    windows = built.data.load("test")
    ids = torch.stack([windows[i]["ids"] for i in range(5)])
    times = torch.stack([windows[i]["times"] for i in range(5)]).double()
    with torch.no_grad():
        query = objective.queries(built.model, {"ids": ids, "times": times})[:, -1]
        expected = query @ built.model.head.embed(torch.arange(16)).T
        scores, _ = objective.recommend(built.model, ids[:, :-1], times)
        torch.testing.assert_close(scores, expected, rtol=0, atol=1e-12)
        # broken variant: asked at the last event's own time instead of the next one's -> another ranking
        stale = times.clone()
        stale[:, -1] = times[:, -2]
        assert (objective.recommend(built.model, ids[:, :-1], stale)[0] - expected).abs().max() > 1e-6
    for row, truth_scores in zip(rows, expected):
        top = [int(v) for v in row["top_items"].split()]
        assert top == torch.topk(truth_scores, 10).indices.tolist()
        rank = int(row["next_item_rank"])
        assert rank == int((truth_scores > truth_scores[int(row["next_item"])]).sum())
