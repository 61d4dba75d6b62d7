"""Per-position noise schedules: the staircase's NELBO is the next-token NLL, the shared one is
MDLM's loss; complementary masking covers every token exactly once."""

from __future__ import annotations

import pytest
import torch

from genloom.core.pattern import CAUSAL, FULL
from genloom.testing import tiny_model
from genloom.toolkit.masking import complementary_masks, complementary_views
from genloom.toolkit.schedules import (BlockSchedule, LineSchedule, SharedSchedule, StaircaseSchedule, corrupt, exact_nelbo,
                                       make_schedule, nelbo_terms)

BASE = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}}


@pytest.fixture(scope="module")
def ar():
    torch.manual_seed(0)
    return tiny_model(base={**BASE, "objective": {"name": "next-token"}}).model.double().eval()


@pytest.fixture(scope="module")
def mdm():
    torch.manual_seed(1)
    return tiny_model(base={**BASE, "objective": {"name": "radd"}}).model.double().eval()


def ar_nll(model, x0):
    """Next-token NLL of x0[:, 1:] given its prefix (one causal pass), summed per sequence; the
    token standing for the mask is excluded, as the diffusion loss never predicts the mask."""
    with torch.no_grad():
        logits = model(x0, pattern=CAUSAL).double()
    logits[..., MASK] = float("-inf")
    logp = torch.log_softmax(logits, -1)
    return -logp[:, :-1].gather(-1, x0[:, 1:, None]).squeeze(-1).sum(-1)


def shifted_denoiser(model):
    """A causal network read with the AR shift: the prediction for position i is the output at i - 1."""
    def denoise(x_t):
        with torch.no_grad():
            out = model(x_t, pattern=CAUSAL).double()
        return torch.cat([out[:, :1], out[:, :-1]], 1)
    return denoise


X0 = torch.tensor([[5, 17, 99, 3, 42, 8, 71], [1, 2, 3, 4, 5, 6, 7]])
MASK = 256  # the eos id of the byte tokenizer: never a token of X0, so it can stand for the mask here


@pytest.mark.parametrize("schedule", [StaircaseSchedule(6), LineSchedule(6, length=6, width=1.0), BlockSchedule.for_length(6, 1)])
def test_the_staircase_nelbo_is_the_next_token_nll(ar, schedule):
    maskable = torch.ones_like(X0, dtype=torch.bool)
    maskable[:, 0] = False  # the first token is the condition, as in next-token prediction
    nelbo = exact_nelbo(shifted_denoiser(ar), X0, schedule, MASK, maskable=maskable)
    torch.testing.assert_close(nelbo, ar_nll(ar, X0), rtol=0, atol=1e-10)


def test_broken_staircase_is_caught(ar):
    """Revealing two positions per step (block size 2) is a looser bound: the equality fails."""
    maskable = torch.ones_like(X0, dtype=torch.bool)
    maskable[:, 0] = False
    nelbo = exact_nelbo(shifted_denoiser(ar), X0, BlockSchedule.for_length(6, 2), MASK, maskable=maskable)
    assert (nelbo - ar_nll(ar, X0)).abs().max() > 1e-3


def mdlm_step_loss(logits, x0, masked, i, T):
    """MDLM's finite-T loss term for step i (linear alpha(t) = 1 - t, t = i/T, s = (i-1)/T), times T."""
    alpha = lambda u: 1.0 - u  # noqa: E731
    t, s = i / T, (i - 1) / T
    weight = (alpha(s) - alpha(t)) / (1.0 - alpha(t))
    logits = logits.double().clone()
    logits[..., MASK] = float("-inf")
    ce = -torch.log_softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)
    return T * (weight.reshape(-1, 1) * ce * masked).sum(-1)


def test_the_shared_schedule_is_mdlms_loss(mdm):
    T = 10
    schedule = SharedSchedule(T)
    g = torch.Generator().manual_seed(3)
    u = torch.rand(X0.shape, generator=g, dtype=torch.float64)
    for step in range(1, T + 1):
        t = torch.full((2,), step)
        x_t, masked = corrupt(X0, schedule, t, MASK, uniform=u)
        assert torch.equal(masked, u < step / T)  # the masking probability is t/T at every position
        with torch.no_grad():
            logits = mdm(x_t, pattern=FULL).double()
        clean = logits.clone()
        clean[..., MASK] = float("-inf")
        nll = -torch.log_softmax(clean, -1).gather(-1, X0[..., None]).squeeze(-1)
        ours = T * nelbo_terms(nll, masked, schedule, t).sum(-1)
        torch.testing.assert_close(ours, mdlm_step_loss(logits, X0, masked, t.double(), T), rtol=1e-12, atol=1e-12)
        # and RADD's lambda-form: sum of masked CE / lambda with lambda = t / T
        torch.testing.assert_close(ours, (nll * masked).sum(-1) / (step / T), rtol=1e-12, atol=1e-12)


def test_a_per_position_schedule_is_not_mdlms(mdm):
    """The broken variant: a line schedule with the same T gives different weights and levels."""
    line = LineSchedule(10, length=7, width=3.0)
    t = torch.tensor(5)
    shared = SharedSchedule(10)
    pos = torch.arange(7)
    assert not torch.allclose(line.reveal_probability(pos, t), shared.reveal_probability(pos, t))


@pytest.mark.parametrize("schedule,length", [(SharedSchedule(8), 6), (StaircaseSchedule(6), 6), (LineSchedule(12, length=6, width=2.5), 6),
                                             (BlockSchedule.for_length(6, 2, 3), 6), (make_schedule("line", steps=7, length=5, width=100.0), 5)])
def test_schedules_are_valid(schedule, length):
    schedule.check(length)
    tab = schedule.table(length)
    w = schedule.reveal_probability(torch.arange(length).reshape(1, -1), torch.arange(1, schedule.steps + 1).reshape(-1, 1))
    assert bool(((w >= 0) & (w <= 1)).all())
    # the product of "stay masked" probabilities from T down to t is m(i, t): the reverse walk is consistent
    stay = torch.cumprod((1 - w).flip(0), 0).flip(0)  # stay[t] = prod_{k > t} (1 - w_k)
    torch.testing.assert_close(stay, tab[:-1], rtol=0, atol=1e-12)


def test_staircase_reveals_one_position_per_step():
    tab = StaircaseSchedule(5).table(5)
    # decoding step k (t: 5 - k + 1 -> 5 - k) makes position k - 1 clean
    for k in range(1, 6):
        changed = (tab[5 - k + 1] - tab[5 - k]).nonzero().flatten().tolist()
        assert changed == [k - 1]


def test_bad_schedules_are_rejected():
    with pytest.raises(ValueError, match="steps"):
        SharedSchedule(0)
    with pytest.raises(ValueError, match="width"):
        LineSchedule(4, length=4, width=0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("cosine-ish", steps=3)
    with pytest.raises(ValueError, match="m\\(i, T\\)"):
        StaircaseSchedule(3).check(5)  # too few steps for 5 positions


def test_complementary_masks_are_disjoint_and_cover_every_token():
    g = torch.Generator().manual_seed(0)
    maskable = torch.rand(64, 20, generator=g) < 0.7
    first, second = complementary_masks(maskable, torch.rand(64, generator=g), generator=g)
    assert not bool((first & second).any())
    assert torch.equal(first | second, maskable)
    ids, masked = complementary_views(torch.arange(20).repeat(64, 1), maskable, 0.5, 99, generator=g)
    assert ids.shape == (128, 20) and torch.equal(masked[:64] ^ masked[64:], maskable)
    assert torch.equal(ids == 99, masked)


def test_independent_masks_are_not_complementary():
    """The broken variant: two independent draws overlap and leave tokens unscored."""
    g = torch.Generator().manual_seed(0)
    maskable = torch.ones(64, 20, dtype=torch.bool)
    a, _ = complementary_masks(maskable, 0.5, generator=g)
    b, _ = complementary_masks(maskable, 0.5, generator=g)
    assert bool((a & b).any()) and not torch.equal(a | b, maskable)
