"""RecycleGPT: n generated tokens cost exactly ceil(n/2) full-stack passes, and every recycled
token comes from the recyclable module applied to the previous full-model hidden state and the
just-generated token (token for token against a cache-free recomputation). Broken variants: a
decoder that runs the full stack for every token fails the pass count; a reference that takes the
recycled tokens from the full model instead disagrees with the decoder's output."""

import math

import pytest
import torch

from genloom.core import config as config_mod
from genloom.core.generation import run
from genloom.core.model import assemble
from genloom.core.pattern import CAUSAL
from genloom.plugins.recyclegpt import RecycleDecoderConfig, RecycleHeadConfig, RecycleObjectiveConfig
from genloom.plugins.recyclegpt.decoder import RecycleDecoder
from genloom.plugins.recyclegpt.objective import RecycleObjective

CYCLE = b"abcdefghijklmnopqrstuvwxyz0123456789"


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = {
        "tokenizer": {"name": "bytes"},
        "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
        "head": {"name": "recyclegpt"},
        "objective": {"name": "recyclegpt"},
        "decoder": {"name": "recyclegpt"},
    }
    return assemble(config_mod.validate(config_mod.compose(base=cfg)), data=False).model.double().eval()


PROMPTS = [list(b"hello wor"), list(b"abc")]


class FullStackEveryStep(RecycleDecoder):
    """Broken variant: the second token of a round comes from a full-stack pass, not the module."""

    def propose(self, session):
        head = session.model.head
        y1 = head(session.scratch["h"]).argmax(-1)
        session.metrics.count_forward("target")
        h2 = session.model.hidden(y1[:, None], pattern=CAUSAL, state=session.state)[:, -1]
        session.state.rollback(session.state.lengths - 1)
        return torch.stack([y1, head(h2).argmax(-1)], 1)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_full_stack_passes_are_ceil_n_over_two(n):
    model = _model()
    out = run(model, PROMPTS, RecycleDecoder(RecycleDecoderConfig()), max_new_tokens=n)
    assert all(len(ids) == n for ids in out.ids)
    assert out.metrics.forward_passes["target"] == math.ceil(n / 2)
    assert out.metrics.forward_passes.get("recycle", 0) == n // 2
    broken = run(model, PROMPTS, FullStackEveryStep(RecycleDecoderConfig()), max_new_tokens=n)
    if n >= 2:
        assert broken.metrics.forward_passes["target"] != math.ceil(n / 2)


def _reference(model, prompt, n, recycled_from_module=True):
    """Cache-free: full stack over the whole prefix for the odd tokens, the module for the even ones."""
    head, seq = model.head, list(prompt)
    while len(seq) - len(prompt) < n:
        h = model.hidden(torch.tensor([seq]), pattern=CAUSAL)[:, -1]
        y1 = head(h).argmax(-1)
        seq.append(int(y1))
        if recycled_from_module:
            y2 = head.recycle_logits(h, y1).argmax(-1)
        else:
            y2 = head(model.hidden(torch.tensor([seq]), pattern=CAUSAL)[:, -1]).argmax(-1)
        seq.append(int(y2))
    return seq[len(prompt): len(prompt) + n]


@torch.no_grad()
def test_recycled_tokens_come_from_the_module_on_the_previous_hidden_state():
    model = _model(seed=1)
    model.head.recycler.down.weight.mul_(20)  # an untrained module far from the identity: its tokens differ from the full model's
    n = 12
    out = run(model, PROMPTS, RecycleDecoder(RecycleDecoderConfig()), max_new_tokens=n)
    for prompt, ids in zip(PROMPTS, out.ids):
        assert ids == _reference(model, prompt, n)
    # broken variant: recycled tokens taken from the full model -> a different output
    assert any(ids != _reference(model, p, n, recycled_from_module=False) for p, ids in zip(PROMPTS, out.ids))


@torch.no_grad()
def test_recycled_logits_depend_only_on_the_hidden_state_and_the_token():
    model = _model(seed=2)
    head = model.head
    h = torch.randn(3, 32, dtype=torch.float64)
    tok = torch.tensor([5, 9, 5])
    before = head.recycle_logits(h, tok)
    for p in model.backbone.parameters():  # the backbone plays no part in a recycled step
        p.add_(torch.randn_like(p))
    assert torch.equal(head.recycle_logits(h, tok), before)
    torch.testing.assert_close(before[0], head.recycle_logits(h[:1], tok[:1])[0], rtol=1e-12, atol=1e-12)  # rows independent
    assert not torch.equal(before[0], head.recycle_logits(h[:1], tok[1:2])[0])  # depends on the token


def test_objective_trains_the_recycled_prediction():
    model = _model(seed=3).float().train()
    objective = RecycleObjective(RecycleObjectiveConfig())
    data = torch.tensor(list(CYCLE * 20))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(60):
        start = torch.randint(len(data) - 33, (8,), generator=g)
        out = objective.loss(model, {"ids": torch.stack([data[s: s + 33] for s in start.tolist()])})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert float(out["acc_recycle"]) > 0.9


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="recycle_weight"):
        RecycleObjectiveConfig(recycle_weight=-1.0)
    with pytest.raises(ValueError, match="hidden"):
        RecycleHeadConfig(hidden=0)
