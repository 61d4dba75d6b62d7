"""The ``duodecoding`` decoder: greedy equality, exact sampled law, dynamic sequences, schedules."""

import pytest
import torch

from genloom.core.generation import run
from genloom.testing import check_decoder, exact_continuations, tiny_model

VOCAB = 6


def model_config(d_model=16, n_layers=1, vocab=VOCAB):
    return {
        "tokenizer": {"name": "ids", "vocab_size": vocab},
        "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
        "backbone": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": 2},
        "objective": {"name": "next-token"},
    }


TARGET = model_config(d_model=32, n_layers=2)


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    built = tiny_model(base=TARGET)
    built.model.eval()
    return built


def duo(built, noise, seed=1, **extra):
    """A duodecoding decoder whose draft is the target's architecture with noisy weights."""
    dec = built.ctx.build("decoder", {"name": "duodecoding", "draft": TARGET, **extra})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p_draft, p_target in zip(dec.draft.parameters(), built.model.parameters()):
            p_draft.copy_(p_target + noise * p_target.std() * torch.randn(p_target.shape, generator=gen))
    return dec


PROMPTS = [[1, 2, 3, 4, 5], [2], [5, 0, 1]]


def test_conformance_and_config_errors(target):
    result = check_decoder(target, {"name": "duodecoding", "draft": model_config(), "gamma": 2})
    assert result.metrics.forward_passes["draft"] > 0
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="draft model is required"):
        target.ctx.build("decoder", {"name": "duodecoding"})
    with pytest.raises(ConfigError, match="threshold"):
        target.ctx.build("decoder", {"name": "duodecoding", "draft": TARGET, "threshold": 1.5})
    with pytest.raises(ConfigError, match="draft_cost and target_cost"):
        target.ctx.build("decoder", {"name": "duodecoding", "draft": TARGET, "draft_cost": 0.01})


def test_hardware_aware_budget():
    from genloom.plugins.duodecoding import DuoDecodingConfig, draft_budget

    assert draft_budget(0.05, 0.01) == 4  # the draft's 4 drafts + 1 guess take one target pass
    assert draft_budget(0.01, 0.05) == 1
    assert DuoDecodingConfig(draft="x", gamma=7, draft_cost=0.002, target_cost=0.02).gamma == 9
    assert DuoDecodingConfig(draft="x", gamma=7).gamma == 7


@pytest.mark.parametrize("gamma,threshold", [(1, 0.9), (3, None), (4, 1.0)])
def test_greedy_equals_target_greedy_with_eos(target, gamma, threshold):
    reference = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=20)
    out = run(target.model, PROMPTS, duo(target, 1.0, gamma=gamma, threshold=threshold, greedy=True), max_new_tokens=20)
    assert out.ids == reference.ids
    assert out.metrics.forward_passes["target"] < 1 + 20  # fewer passes than one per token
    eos = reference.ids[0][3]  # a token the first sequence emits: stops it early
    ref_eos = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=20, eos_id=eos)
    out_eos = run(target.model, PROMPTS, duo(target, 1.0, gamma=gamma, threshold=threshold, greedy=True), max_new_tokens=20, eos_id=eos)
    assert out_eos.ids == ref_eos.ids


def test_a_perfect_draft_reuses_every_block_drafted_ahead(target):
    """A draft equal to the target: every block and guess is accepted, so each block after the
    first was drafted ahead (in the worker, during the previous verification)."""
    out = run(target.model, PROMPTS, duo(target, 0.0, gamma=3, greedy=True), max_new_tokens=16)
    reference = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=16)
    assert out.ids == reference.ids
    extra = out.metrics.extra
    assert extra["duo_reused_blocks"] == extra["duo_rounds"] - 1 > 0
    assert out.metrics.mean_acceptance_length == 3


def test_keeping_draft_work_after_a_rejection_is_caught(target, monkeypatch):
    from genloom.plugins.duodecoding.decoder import DuoDecoder

    reference = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=20)
    monkeypatch.setattr(DuoDecoder, "_reusable", lambda self, *a: True)  # broken: always keep the work ahead
    out = run(target.model, PROMPTS, duo(target, 1.0, gamma=3, greedy=True), max_new_tokens=20)
    assert out.ids != reference.ids


def test_extra_sequences_only_below_the_threshold(target):
    never = run(target.model, PROMPTS, duo(target, 1.0, gamma=2, threshold=0.0), max_new_tokens=12, seed=3)
    assert never.metrics.extra["duo_extra_sequences"] == 0
    always = run(target.model, PROMPTS, duo(target, 1.0, gamma=2, threshold=1.0, top_k=3), max_new_tokens=12, seed=3)
    e = always.metrics.extra
    assert e["duo_low_first_token"] == len(e["duo_confidences"]) and e["duo_extra_sequences"] == 2 * e["duo_low_first_token"] > 0
    threshold = sorted(e["duo_confidences"])[len(e["duo_confidences"]) // 2]  # this draft's median confidence
    mid = run(target.model, PROMPTS, duo(target, 1.0, gamma=2, threshold=threshold, top_k=3), max_new_tokens=12, seed=3)
    e = mid.metrics.extra
    below = sum(c < threshold for c in e["duo_confidences"])
    assert 0 < below < len(e["duo_confidences"])  # the threshold splits this draft's rounds
    assert e["duo_low_first_token"] == below and e["duo_extra_sequences"] == 2 * below


def test_the_papers_rule_spawns_the_candidates_above_p11_times_p21(target):
    """threshold null: candidate k starts a sequence iff p_{1,k} > p_{1,1} p_{2,1}, recomputed here
    from the draft for the first round of each prompt."""
    for prompt in PROMPTS:
        dec = duo(target, 1.0, gamma=2, top_k=6)
        out = run(target.model, [prompt], dec, max_new_tokens=1, seed=0)  # one round
        with torch.no_grad():
            q0 = torch.softmax(dec.draft(torch.tensor([prompt]))[0, -1].double(), -1)
            top = q0.sort(descending=True)
            q1 = torch.softmax(dec.draft(torch.tensor([prompt + [int(top.indices[0])]]))[0, -1].double(), -1)
        expected = int((top.values[1:] > top.values[0] * q1.max()).sum())
        assert out.metrics.extra["duo_extra_sequences"] == expected
    runs = [run(target.model, PROMPTS, duo(target, 1.0, gamma=2, top_k=6), max_new_tokens=16, seed=s).metrics.extra for s in range(3)]
    spawned = sum(e["duo_extra_sequences"] for e in runs)
    assert 0 < spawned < 5 * sum(len(e["duo_confidences"]) for e in runs)  # dynamic: neither none nor all
    assert run(target.model, PROMPTS, duo(target, 1.0, gamma=2, top_k=1), max_new_tokens=8).metrics.extra["duo_extra_sequences"] == 0


def test_concurrent_and_sequential_schedules_give_the_same_tokens(target):
    import threading

    from genloom.plugins.duodecoding.decoder import DuoDecoder

    dec = duo(target, 1.0, gamma=3, concurrent=True)
    seen = []
    real = dec._ahead
    dec._ahead = lambda *a: (seen.append(threading.current_thread() is not threading.main_thread()), real(*a))[1]
    run(target.model, PROMPTS, dec, max_new_tokens=8)
    assert seen and all(seen)  # the next block is drafted in the worker thread
    for threshold in (None, 0.6):
        a = run(target.model, PROMPTS, duo(target, 1.0, gamma=3, threshold=threshold, concurrent=True), max_new_tokens=16, seed=5)
        b = run(target.model, PROMPTS, duo(target, 1.0, gamma=3, threshold=threshold, concurrent=False), max_new_tokens=16, seed=5)
        assert a.ids == b.ids
    for greedy in (False, True):
        a = run(target.model, PROMPTS, duo(target, 1.0, gamma=3, threshold=0.6, greedy=greedy, concurrent=True), max_new_tokens=16, seed=5)
        b = run(target.model, PROMPTS, duo(target, 1.0, gamma=3, threshold=0.6, greedy=greedy, concurrent=False), max_new_tokens=16, seed=5)
        assert a.ids == b.ids
        assert a.metrics.forward_passes == b.metrics.forward_passes


def _continuation_pvalues(target, draws, length, **extra):
    stats = pytest.importorskip("scipy.stats")
    prompt = [1, 2, 3]
    dec = duo(target, 1.0, **extra)
    out = run(target.model, [prompt] * draws, dec, max_new_tokens=length, seed=11)
    exact_target = exact_continuations(target.model, prompt, length, (), VOCAB)
    exact_draft = exact_continuations(dec.draft, prompt, length, (), VOCAB)
    counts = {seq: 0 for seq in exact_target}
    for ids in out.ids:
        counts[tuple(ids)] += 1
    keys = [s for s in exact_target if exact_target[s] * draws >= 5]  # pool the rare ones
    observed = [counts[s] for s in keys] + [draws - sum(counts[s] for s in keys)]
    def expected(law):
        e = [law[s] * draws for s in keys]
        return e + [draws - sum(e)]
    return stats.chisquare(observed, expected(exact_target)).pvalue, stats.chisquare(observed, expected(exact_draft)).pvalue, out


def test_sampled_continuations_follow_the_target_law(target):
    """2-token continuations with top-3 first tokens every round: chi-square against the exact
    target law passes, against the draft's own law fails (the test can tell them apart)."""
    p_target, p_draft, out = _continuation_pvalues(target, 3000, 2, gamma=2, threshold=1.0, top_k=3)
    assert p_target > 1e-3
    assert p_draft < 1e-6
    assert out.metrics.extra["duo_extra_sequences"] > 0


def test_accepting_without_the_residual_is_caught(target, monkeypatch):
    """Broken variant: a rejected first level redraws from the target's full law instead of the residual."""
    import genloom.plugins.duodecoding.decoder as mod

    real = mod.verify_static

    def no_residual(shape, p, tokens, rule=None, generator=None):
        res = real(shape, p, tokens, rule, generator)
        redraw = torch.multinomial(p[:, 0], 1, generator=generator).squeeze(1)
        return res._replace(next_token=torch.where(res.num_accepted == 0, redraw, res.next_token))

    monkeypatch.setattr(mod, "verify_static", no_residual)
    p_target, _, _ = _continuation_pvalues(target, 3000, 2, gamma=2, threshold=1.0, top_k=3)
    assert p_target < 1e-3


@pytest.mark.slow
def test_sampled_three_token_continuations_follow_the_target_law_slow(target):
    p_target, p_draft, out = _continuation_pvalues(target, 20000, 3, gamma=2, threshold=None, top_k=4)
    assert out.metrics.extra["duo_extra_sequences"] > 0
    assert p_target > 1e-3 and p_draft < 1e-6
