"""LO-ARM: the order policy never picks a generated position; the joint over (x, order) is
normalised; the bound equals the AR likelihood of a one-hot order and is below log p(x) computed by
enumerating all orders (gap = KL); the training loss estimates that bound without bias."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genloom.core.generation import Generator
from genloom.plugins.lo_arm import objective as objective_mod
from genloom.plugins.lo_arm.head import generator_step, order_log_probs
from genloom.plugins.lo_arm.objective import exact_elbo, exact_log_likelihood, initially_revealed, step_terms
from genloom.core.pattern import FULL
from genloom.testing import check_decoder, check_objective, tiny_model

N, V = 4, 3  # 4 positions over ids {0, 1, 2}: 81 sequences, 24 orders


def _model(seed=0, data=None, decoder=None):
    base = {
        "tokenizer": {"name": "ids", "vocab_size": V, "eos_id": 0},
        "head": {"name": "lo-arm"},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "lo-arm", "posterior": {"name": "transformer", "d_model": 8, "n_layers": 1, "n_heads": 2}},
    }
    if data:
        base["data"] = data
    if decoder:
        base["decoder"] = decoder
    b = tiny_model(base=base, seed=seed)
    b.model.double().eval()
    with torch.no_grad():  # larger weights than the init, so that orders matter
        for p in b.model.parameters():
            p.mul_(20.0)
    return b


def _all_sequences():
    return torch.tensor(list(itertools.product(range(V), repeat=N)))


def test_order_policy_gives_generated_positions_zero_probability():
    logits = torch.randn(3, 5, dtype=torch.float64)
    revealed = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    lp = order_log_probs(logits, revealed)
    assert torch.isneginf(lp[revealed]).all()
    assert torch.allclose(lp[:2].exp().sum(1), torch.ones(2, dtype=torch.float64))
    b = _model()
    ids = torch.tensor([[1, 2, 0, 1]])
    _, order_lp = generator_step(b.model, ids, torch.tensor([[True, False, True, False]]), FULL)
    order_lp = order_lp.detach()
    assert order_lp[0, 0].exp() == 0 and order_lp[0, 2].exp() == 0 and abs(float(order_lp.exp().sum()) - 1) < 1e-12
    assert b.ctx.mask_id == V and b.ctx.vocab_size == V + 1


def test_the_joint_over_sequences_and_orders_sums_to_one():
    b = _model()
    xs = _all_sequences()
    logp = exact_log_likelihood(b.model, xs, initially_revealed(xs, None))
    assert abs(float(logp.exp().sum()) - 1.0) < 1e-9


def test_a_policy_that_may_repick_a_generated_position_is_not_normalised(monkeypatch):
    """Broken variant: order logits not masked at generated positions; mass leaks to invalid orders."""
    b = _model()
    monkeypatch.setattr(objective_mod, "generator_step", _unmasked_step)
    xs = _all_sequences()
    assert float(exact_log_likelihood(b.model, xs, initially_revealed(xs, None)).exp().sum()) < 0.99


def _unmasked_step(model, ids, revealed, pattern):
    head = model.head
    state = torch.where(revealed, ids, torch.full_like(ids, head.mask_id))
    h = model.backbone(head.embed(state), pattern=pattern)
    return head(h).log_softmax(-1), head.order_logits(h).log_softmax(-1)


def test_bound_is_below_the_enumerated_likelihood_with_the_kl_as_gap():
    b = _model()
    xs = _all_sequences()[::7]
    revealed0 = initially_revealed(xs, None)
    logp = exact_log_likelihood(b.model, xs, revealed0)
    elbo = exact_elbo(b.model, b.model.objective.posterior, xs, revealed0)
    assert (elbo <= logp + 1e-10).all() and (logp - elbo).max() > 1e-3
    # gap = KL(q(z|x) || p(z|x)), with p(z|x) = p(x,z)/p(x) over the 24 orders
    joint, lq = objective_mod._enumerate(b.model, b.model.objective.posterior, xs, revealed0)
    kl = (lq.exp() * (lq - (joint - logp[:, None]))).sum(1)
    assert torch.allclose(logp - elbo, kl, atol=1e-9)


def test_a_bound_without_the_order_policy_term_is_not_a_bound(monkeypatch):
    """Broken variant: dropping log p(z_t | s_t) (treating the order as free) overshoots log p(x)."""
    b = _model()
    xs = _all_sequences()[::5]
    revealed0 = initially_revealed(xs, None)
    logp = exact_log_likelihood(b.model, xs, revealed0)
    real = objective_mod.step_terms
    monkeypatch.setattr(objective_mod, "step_terms", lambda *a: (lambda t: (torch.zeros_like(t[0]), t[1], t[2]))(real(*a)))
    assert (exact_elbo(b.model, b.model.objective.posterior, xs, revealed0) > logp + 1e-3).any()


def test_a_one_hot_order_policy_gives_the_exact_ar_likelihood_in_that_order():
    """p and q both put all mass on a fixed order (right to left): ELBO = log p(x) = sum_t log p(x_{z_t} | x_{z<t})."""
    b = _model()
    for out in (b.model.head.order_head, b.model.objective.posterior.out):
        with torch.no_grad():
            out.weight.zero_()
    positions = torch.arange(N, dtype=torch.float64)

    def step(model, ids, revealed, pattern, real=objective_mod.generator_step):
        token_lp, _ = real(model, ids, revealed, pattern)
        return token_lp, order_log_probs(1e4 * positions.expand_as(revealed), revealed)

    class OneHotPosterior(torch.nn.Module):
        def forward(self, ids, revealed):
            return order_log_probs(1e4 * positions.expand_as(revealed), revealed)

    xs = _all_sequences()[::3]
    revealed0 = initially_revealed(xs, None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objective_mod, "generator_step", step)
        logp = exact_log_likelihood(b.model, xs, revealed0)
        elbo = exact_elbo(b.model, OneHotPosterior(), xs, revealed0)
    order = torch.arange(N - 1, -1, -1).expand(len(xs), N)
    _, lp_x, _ = step_terms(b.model, None, xs, revealed0, order)
    assert torch.allclose(elbo, lp_x.sum(1), atol=1e-9) and torch.allclose(logp, lp_x.sum(1), atol=1e-9)


def test_the_training_loss_is_an_unbiased_estimate_of_the_bound():
    b = _model()
    b.model.objective.samples = 250
    x = torch.tensor([[2, 0, 1, 2]])
    torch.manual_seed(0)
    estimates = torch.tensor([float(b.model.loss({"ids": x})["nelbo_per_position"]) for _ in range(16)])
    elbo = exact_elbo(b.model, b.model.objective.posterior, x, initially_revealed(x, None))
    error = estimates.std() / 16**0.5  # 16 independent estimates of 250 trajectories each
    assert error < 0.2  # tight enough to tell a biased estimator (the bound of another posterior differs by more)
    assert abs(float(estimates.mean()) - float(-elbo / N)) < 4 * float(error)


def test_objective_decoder_and_source_conditioning():
    data = {"name": "seq2seq", "source_length": 2, "target_length": 3}
    b = _model(data=data, decoder={"name": "lo-arm", "greedy": True})
    from genloom.core.data import SourceTargetPairs

    pairs = SourceTargetPairs([([1, 2], [2]), ([1], [1, 2])], 2, 3, pad_id=0, eos_id=0)
    batch = torch.utils.data.default_collate([pairs[i] for i in range(2)])
    b.model.train()
    out = check_objective(b, batch)
    assert out["_tokens"] == 2 * 3  # the target positions only: the source block is revealed
    b.model.eval()
    result = Generator(b).generate(source=[[1, 2], [2]], max_new_tokens=3)
    assert result.metrics.forward_passes == {"target": 3}
    check_decoder(_model(decoder={"name": "lo-arm"}), {"name": "lo-arm"}, prompts=((1, 2), (2, 1)), max_new_tokens=3)
    with pytest.raises(Exception, match="posterior"):
        tiny_model(base={"tokenizer": {"name": "ids", "vocab_size": 3, "eos_id": 0}, "head": {"name": "lo-arm"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
                         "objective": {"name": "lo-arm", "posterior": {"name": "transformer", "d_modl": 8}}})
    assert math.isfinite(float(out["loss"].detach()))
