"""CtrlDiff: gamma 0 is unguided exactly and guidance reweights p(x0|xt) p(y|x0)^gamma; block lengths
sum to the generated length; the block-length policy learns from a policy-gradient reward."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.ctrldiff.decoder import attribute_log_likelihood
from genloom.plugins.ctrldiff.policy import BlockPolicy, load_policy, save_policy, train_policy
from genloom.testing import check_decoder, tiny_model

BACKBONE = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}
MDM = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": BACKBONE, "objective": {"name": "radd"}}
PROMPTS = [[10, 11, 12, 13], [20], [30, 31]]


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return tiny_model(base=MDM)


def _run(built, node, max_new_tokens=12, dec=None):
    dec = dec or built.ctx.build("decoder", {"name": "ctrldiff", **node})
    return run(built.model, PROMPTS, dec, max_new_tokens=max_new_tokens), dec


def test_gamma_zero_is_unguided_exactly(built):
    plain, _ = _run(built, {"block_length": 4})
    zero, _ = _run(built, {"block_length": 4, "gamma": 0.0, "attribute_tokens": "xyz"})
    assert zero.ids == plain.ids


def test_guidance_reweights_with_the_classifier(built, monkeypatch):
    """The decoder's step sees exactly log p(x0|xt) + gamma log p(y|x0), renormalised; a strong
    gamma makes the attribute's tokens dominate."""
    import genloom.plugins.ctrldiff.decoder as mod
    seen = {}
    original = mod.guided_logits

    def spy(logits, clf, gamma):
        seen.update(logits=logits.clone(), clf=clf.clone(), gamma=gamma)
        return original(logits, clf, gamma)
    monkeypatch.setattr(mod, "guided_logits", spy)
    res, _ = _run(built, {"block_length": 4, "gamma": 8.0, "attribute_tokens": "xyz"})
    clf = attribute_log_likelihood(built.model.tokenizer, "xyz", built.ctx.vocab_size, 0.9)
    torch.testing.assert_close(seen["clf"], clf)
    p = torch.softmax(seen["logits"].double(), -1) * torch.exp(clf) ** 8.0
    torch.testing.assert_close(torch.exp(original(seen["logits"], clf, 8.0)), p / p.sum(-1, keepdim=True))
    attr = set((clf > clf.min()).nonzero().flatten().tolist())
    assert attr == {ord("x"), ord("y"), ord("z")}
    share = sum(t in attr for ids in res.ids for t in ids) / sum(len(ids) for ids in res.ids)
    plain, _ = _run(built, {"block_length": 4})
    base_share = sum(t in attr for ids in plain.ids for t in ids) / sum(len(ids) for ids in plain.ids)
    assert share > 0.9 > base_share


def test_block_lengths_sum_to_the_generated_length(built):
    torch.manual_seed(1)
    dec = built.ctx.build("decoder", {"name": "ctrldiff", "block_sizes": [2, 3, 5]})
    dec.policy = BlockPolicy(5, 3)
    dec.sample_actions = True
    res, _ = _run(built, {}, max_new_tokens=13, dec=dec)
    for lengths in res.metrics.extra["block_lengths"]:
        assert sum(lengths) == 13 and all(1 <= n <= 5 for n in lengths)
        assert all(n in (2, 3, 5) for n in lengths[:-1])  # only the last block is clipped
    steps = res.metrics.extra["row_steps"]
    assert steps == [2 * len(x) for x in res.metrics.extra["block_lengths"]]  # steps_per_block each


def test_policy_gradient_learns_the_cheap_blocks_when_steps_cost(built):
    """With a large step cost the reward prefers long blocks: REINFORCE raises the mean reward and
    the trained policy picks the longest block; the broken variant (ascending the negative reward)
    learns the opposite."""
    prompts = [[i, i + 1, i + 2] for i in range(40, 48)]

    def trained(sign):
        dec = built.ctx.build("decoder", {"name": "ctrldiff", "block_sizes": [1, 2, 8]})
        history = train_policy(built, dec, prompts, 8, cost=2.0, episodes=25, lr=0.1, seed=0, sign=sign)
        res = run(built.model, prompts, dec, max_new_tokens=8)
        return history, res.metrics.extra["block_lengths"]
    history, lengths = trained(1.0)
    assert sum(history[-5:]) / 5 > sum(history[:5]) / 5
    assert all(x == [8] for x in lengths)
    _, broken = trained(-1.0)
    assert all(max(x) <= 2 for x in broken)


def test_policy_round_trip_and_errors(built, tmp_path):
    policy = BlockPolicy(8, 3)
    save_policy(policy, tmp_path / "p.safetensors")
    again = load_policy(tmp_path / "p.safetensors")
    x = torch.rand(4, 8)
    torch.testing.assert_close(again(x), policy(x))
    check_decoder(built, {"name": "ctrldiff", "policy_path": str(tmp_path / "p.safetensors")})
    from genloom.plugins.ctrldiff import CtrlDiffConfig
    with pytest.raises(ValueError, match="attribute_tokens"):
        CtrlDiffConfig(gamma=1.0)
    with pytest.raises(ValueError, match="steps_per_block"):
        CtrlDiffConfig(steps_per_block=0)
