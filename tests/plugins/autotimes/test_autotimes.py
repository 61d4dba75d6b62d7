"""AutoTimes: the frozen LM's parameters get no gradient (while gradients flow through it to the
segment embedding), the prediction of segment i + 1 does not read segments after i, rolling out
segments forecasts any horizon (a 2S forecast equals two chained S-step forecasts), and the
position texts are the frozen LM's own embeddings."""

from pathlib import Path

import pytest
import torch

from genloom.testing import tiny_model
from genloom.toolkit.forecasting_patches import FrozenLM

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "autotimes.yaml"


@pytest.fixture(scope="module")
def built(frozen_lm_run):
    torch.manual_seed(0)
    return tiny_model(CONFIG, [f"backbone.lm_run={frozen_lm_run}", "backbone.hidden=16", "tokenizer.horizon=8"])


def _batch(seed=0, variates=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 16, variates, generator=g).cumsum(1)
    return {"x": x, "y": x[:, -1:] + torch.randn(4, 8, variates, generator=g).cumsum(1)}


def _gradients(model):
    model.zero_grad(set_to_none=True)
    model.train()
    model.loss(_batch())["loss"].backward()
    lm = [p.grad for p in model.backbone.lm.parameters()]
    embedding = [p.grad for p in model.backbone.embedding.parameters()]
    return lm, embedding


def test_the_frozen_lm_gets_no_gradient_and_gradients_flow_through_it(built):
    model = built.model
    lm, embedding = _gradients(model)
    assert all(g is None or g.abs().max() == 0 for g in lm)
    assert all(g is not None and g.abs().max() > 0 for g in embedding)  # reached through the LM
    assert not model.backbone.lm.training  # stays in eval mode while the model trains
    before = [p.detach().clone() for p in model.backbone.lm.parameters()]
    from genloom.core.training import parameter_groups

    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-2)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.backbone.lm.parameters()))


def test_an_unfrozen_lm_is_caught(built):
    # broken variant: the LM's parameters left trainable get gradients
    lm = built.model.backbone.lm
    for p in lm.parameters():
        p.requires_grad_(True)
    try:
        grads, _ = _gradients(built.model)
        assert any(g is not None and g.abs().max() > 0 for g in grads)
    finally:
        for p in lm.parameters():
            p.requires_grad_(False)
        built.model.zero_grad(set_to_none=True)


def _leak(model, mask_off=False):
    segments = torch.randn(2, 6, 4)
    model.eval()
    with torch.no_grad():
        out = model.backbone(segments)
        leak = 0.0
        for i in range(5):
            changed = segments.clone()
            changed[:, i + 1:] += 3.0
            leak = max(leak, (model.backbone(changed)[:, :i + 1] - out[:, :i + 1]).abs().max().item())
    return leak


def test_segment_i_plus_1_prediction_reads_no_later_segment(built, monkeypatch):
    assert _leak(built.model) == 0.0
    # broken variant: the frozen LM run with the full (bidirectional) pattern
    from genloom.core.pattern import FULL

    monkeypatch.setattr(FrozenLM, "forward", lambda self, h: self.backbone(h, pattern=FULL))
    assert _leak(built.model) > 1e-4


def test_rolling_out_segments_forecasts_any_horizon(built):
    model, objective = built.model, built.model.objective
    x = _batch(1)["x"].double()
    model.double().eval()
    try:
        with torch.no_grad():
            whole = objective.predict(model, x, horizon=8)
            first = objective.predict(model, x, horizon=4)
            second = objective.predict(model, torch.cat([x, first], 1)[:, 4:], horizon=4)
            assert (whole - torch.cat([first, second], 1)).abs().max() < 1e-12
            assert torch.allclose(objective.predict(model, x, horizon=5), whole[:, :5], atol=1e-12)
            assert objective.predict(model, x, horizon=20).shape == (4, 20, 3)
    finally:
        model.float()


def test_position_texts_are_the_frozen_lms_embeddings_of_the_segment_names(built):
    backbone = built.model.backbone
    expected = backbone.lm.embed_text(["segment 0", "segment 5"])
    assert torch.allclose(backbone.position_text[[0, 5]].float(), expected.float(), atol=1e-6)
    assert (backbone.position_text[0] - backbone.position_text[5]).abs().max() > 1e-4


def test_a_missing_lm_run_is_a_config_error():
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="backbone.lm_run"):
        tiny_model(CONFIG, ["backbone.lm_run=/nonexistent/run", "tokenizer.horizon=4"])
    with pytest.raises(ConfigError, match="backbone.lm_run"):
        tiny_model(CONFIG, ["backbone.lm_run=null", "tokenizer.horizon=4"])


def test_runnable_config_assembles_and_trains_a_batch(frozen_lm_run):
    from genloom.testing import check_model_config

    check_model_config(CONFIG, [f"backbone.lm_run={frozen_lm_run}"])
