"""EDLM: one candidate (or E = 0) is the base sampler; importance resampling moves the law toward
the target as k grows (exact laws on an enumerable toy space); the weights are p_AR / q."""

from __future__ import annotations

import itertools

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.edlm.decoder import ar_log_prob
from genloom.plugins.edlm.importance import resample, resampled_law
from genloom.testing import check_decoder, tiny_model

BACKBONE = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}
MDM = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": BACKBONE, "objective": {"name": "radd"}}
AR = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": {**BACKBONE, "d_model": 16}, "objective": {"name": "next-token"}}
PROMPTS = [[10, 11, 12, 13], [20], [30, 31]]


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return tiny_model(base=MDM)


def toy():
    """A factorised proposal q and a correlated target p over 3 positions x 3 tokens (27 states)."""
    g = torch.Generator().manual_seed(0)
    marg = torch.softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), -1)
    states = list(itertools.product(range(3), repeat=3))
    log_q = torch.tensor([sum(torch.log(marg[i, s[i]]) for i in range(3)) for s in states])
    log_p = torch.randn(27, generator=g, dtype=torch.float64) * 1.5
    return log_q, log_p - torch.logsumexp(log_p, 0)


def chi2(law, p):
    return float(((law - p) ** 2 / p).sum())


def test_resampled_law_approaches_the_target_as_k_grows():
    log_q, log_p = toy()
    p = torch.exp(log_p)
    laws = [resampled_law(log_q, log_p, k) for k in (1, 2, 3)]
    torch.testing.assert_close(laws[0], torch.exp(log_q))  # one candidate: the proposal
    div = [chi2(law, p) for law in laws]
    assert div[0] > div[1] > div[2]
    for law in laws:
        torch.testing.assert_close(law.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_zero_energy_keeps_the_proposal_law_exactly():
    log_q, _ = toy()
    for k in (1, 2, 3):
        torch.testing.assert_close(resampled_law(log_q, log_q, k), torch.exp(log_q))  # E = 0
    # the broken variant: weighting by q instead of 1/q (a sign error in E) moves the law away
    assert chi2(resampled_law(log_q, 2 * log_q, 2), torch.exp(log_q)) > 1e-3


def test_resample_draws_with_the_weights():
    g = torch.Generator().manual_seed(0)
    log_w = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3)
    counts = torch.bincount(resample(log_w, g), minlength=3).double() / 20000
    torch.testing.assert_close(counts, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), atol=0.015, rtol=0)


@pytest.mark.parametrize("options", [{"candidates": 1}, {"candidates": 4, "importance_steps": 0}])
def test_one_candidate_is_the_radd_sampler(built, options):
    radd = run(built.model, PROMPTS, built.ctx.build("decoder", {"name": "radd", "steps": 8, "cache": False}), max_new_tokens=10, seed=3)
    edlm = run(built.model, PROMPTS, built.ctx.build("decoder", {"name": "edlm", "steps": 8, "energy": "none", **options}), max_new_tokens=10, seed=3)
    assert edlm.ids == radd.ids


def test_weights_are_p_ar_over_q(built):
    torch.manual_seed(5)
    ar = tiny_model(base=AR).model.eval()
    dec = built.ctx.build("decoder", {"name": "edlm", "steps": 4, "candidates": 3, "importance_steps": 1, "energy_model": AR})
    dec._energy_model = ar
    seen = {}
    original = dec.importance

    def spy(session, cands, logp, masked):
        out = original(session, cands, logp, masked)
        seen.update(cands=cands.clone(), logp=logp.clone(), masked=masked.clone(), out=out, valid=session.scratch["canvas_valid"].clone(),
                    start=session.scratch["gen_start"])
        return out
    dec.importance = spy
    res = run(built.model, PROMPTS, dec, max_new_tokens=6, seed=1)
    assert res.metrics.forward_passes["energy"] == 1 and res.metrics.extra["importance_steps_done"] == 1
    B, k, L = seen["cands"].shape
    for b in range(B):
        for j in range(k):
            x = seen["cands"][b, j]
            lq = sum(float(seen["logp"][b, i, x[i]]) for i in range(L) if seen["masked"][b, i])
            gen = torch.zeros(1, L, dtype=torch.bool)
            gen[:, seen["start"]:] = True
            with torch.no_grad():
                lp = float(ar_log_prob(ar, x[None].clone(), seen["valid"][b:b + 1].clone(), gen))
            assert abs(float(seen["out"][b, j]) - (lp - lq)) < 1e-4


def test_contract_and_config_errors(built):
    check_decoder(built, {"name": "edlm", "energy": "none", "candidates": 3, "steps": 4})
    from genloom.plugins.edlm import EDLMConfig
    with pytest.raises(ValueError, match="energy_model"):
        EDLMConfig(energy="ar", candidates=4)
    with pytest.raises(ValueError, match="candidates"):
        EDLMConfig(candidates=0, energy="none")
