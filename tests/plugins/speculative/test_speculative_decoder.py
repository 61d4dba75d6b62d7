"""The ``speculative`` decoder on the core loop: greedy equality, exact distribution, metrics."""


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
DRAFT = model_config(d_model=16, n_layers=1)


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    built = tiny_model(base=TARGET)
    built.model.eval()
    return built


def noisy_copy_draft(built, gamma, noise, seed=1, config=TARGET, **extra):
    """A draft of the target's architecture whose weights are the target's plus noise."""
    dec = built.ctx.build("decoder", {"name": "speculative", "draft": config, "gamma": gamma, **extra})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (name, p_draft), (_, p_target) in zip(dec.draft.named_parameters(), built.model.named_parameters()):
            p_draft.copy_(p_target + noise * p_target.std() * torch.randn(p_target.shape, generator=gen))
    return dec


def test_conformance_and_draft_config_errors(target):
    result = check_decoder(target, {"name": "speculative", "draft": DRAFT, "gamma": 3})
    assert result.metrics.forward_passes["draft"] > 0
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="draft model is required"):
        target.ctx.build("decoder", {"name": "speculative"})
    with pytest.raises(ConfigError, match="vocabulary"):
        target.ctx.build("decoder", {"name": "speculative", "draft": model_config(vocab=VOCAB + 1)})
    with pytest.raises(ConfigError, match="gamma"):
        target.ctx.build("decoder", {"name": "speculative", "draft": DRAFT, "gamma": 0})


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_equals_target_greedy_with_fewer_target_passes(target, gamma):
    prompts = [[1, 2, 3, 4, 5], [2], [5, 0, 1]]  # left padding, per-sequence acceptance
    max_new = 24
    reference = run(target.model, prompts, target.ctx.build("decoder", "greedy"), max_new_tokens=max_new)
    dec = noisy_copy_draft(target, gamma, noise=1.0, greedy=True)
    out = run(target.model, prompts, dec, max_new_tokens=max_new)
    assert out.ids == reference.ids
    m = out.metrics
    assert m.forward_passes["target"] < m.tokens_generated / len(prompts)
    assert m.tokens_per_forward > 1.0
    assert 0 < m.mean_acceptance_length < gamma  # the draft is not the target: some drafts rejected
    assert len(m.acceptance_rate_by_position) == gamma
    # a draft identical to the target is always accepted: gamma + 1 tokens per target pass
    same = noisy_copy_draft(target, gamma, noise=0.0, greedy=True)
    exact = run(target.model, prompts, same, max_new_tokens=max_new)
    assert exact.ids == reference.ids
    assert exact.metrics.mean_acceptance_length == gamma
    rounds = -(-max_new // (gamma + 1))
    assert exact.metrics.forward_passes["target"] == 1 + rounds  # prefill + one pass per round


def test_greedy_with_processors_and_eos_matches_greedy(target):
    procs = [target.ctx.build("processor", {"name": "repetition-penalty", "penalty": 1.5})]
    prompts = [[0, 1], [3, 3, 3, 2]]
    reference = run(target.model, prompts, target.ctx.build("decoder", "greedy"), max_new_tokens=16, processors=procs)
    eos = reference.ids[0][5]
    reference = run(target.model, prompts, target.ctx.build("decoder", "greedy"), max_new_tokens=16, processors=procs, eos_id=eos)
    dec = noisy_copy_draft(target, 4, noise=1.0, greedy=True)
    out = run(target.model, prompts, dec, max_new_tokens=16, processors=procs, eos_id=eos)
    assert out.ids == reference.ids


@pytest.mark.slow
def test_sampled_continuations_follow_the_target_distribution():
    """End to end: 2-token continuations from speculative decoding vs the exact target
    distribution (enumerated), chi-square; the draft's own distribution is rejected by the same test."""
    stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(0)
    target = tiny_model(base=DRAFT)  # the smallest model keeps 20k sequences fast
    target.model.eval()
    procs = [target.ctx.build("processor", {"name": "temperature", "temperature": 0.7})]
    prompt = [1, 4, 2]
    draws = 20_000
    dec = noisy_copy_draft(target, 2, noise=1.0, config=DRAFT)
    out = run(target.model, [prompt] * draws, dec, max_new_tokens=2, processors=procs, seed=123)
    exact_target = exact_continuations(target.model, prompt, 2, procs, VOCAB)
    exact_draft = exact_continuations(dec.draft, prompt, 2, procs, VOCAB)
    counts = {seq: 0 for seq in exact_target}
    for ids in out.ids:
        counts[tuple(ids)] += 1
    observed = [counts[s] for s in exact_target]
    expected = [exact_target[s] * draws for s in exact_target]
    scale = draws / sum(expected)
    assert stats.chisquare(observed, [e * scale for e in expected]).pvalue > 1e-3
    expected_draft = [exact_draft[s] * draws for s in exact_target]
    assert stats.chisquare(observed, [e * draws / sum(expected_draft) for e in expected_draft]).pvalue < 1e-6
    # the draft was useful: more than one token per target pass, some drafts rejected
    assert 0 < out.metrics.mean_acceptance_length < 2


def test_a_draft_equal_to_the_target_is_always_accepted_when_sampling(target):
    """State bookkeeping (rollback of the target, snapshot/restore of the draft, ragged re-feed):
    a misaligned cache would make q differ from p and reject drafts."""
    prompts = [[1, 2, 3, 4], [5], [0, 2]]
    gamma, max_new = 3, 17
    dec = noisy_copy_draft(target, gamma, noise=0.0)
    out = run(target.model, prompts, dec, max_new_tokens=max_new, seed=3)
    assert all(len(ids) == max_new for ids in out.ids)
    assert out.metrics.mean_acceptance_length == gamma
    assert out.metrics.acceptance_rate_by_position == [1.0] * gamma


def test_draft_from_a_run_directory_is_loaded_lazily(target, tmp_path):
    from genloom.core import runio
    from genloom.core.plugins import get_registry

    torch.manual_seed(7)
    draft = tiny_model(base=DRAFT)
    run_dir = tmp_path / "draft-run"
    runio.save_config(run_dir, draft.model.config, get_registry())
    runio.save_weights(run_dir, draft.model)
    missing = target.ctx.build("decoder", {"name": "speculative", "draft": str(tmp_path / "not-yet-trained")})
    from genloom.core.errors import GenloomError

    with pytest.raises(GenloomError):
        missing.draft  # noqa: B018  (a path is only read when the draft is first needed)
    dec = target.ctx.build("decoder", {"name": "speculative", "draft": str(run_dir), "gamma": 2})
    for a, b in zip(dec.draft.parameters(), draft.model.parameters()):
        assert torch.equal(a, b)
    out = run(target.model, [[1, 2]], dec, max_new_tokens=5)
    assert len(out.ids[0]) == 5


def test_plugin_package_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, genloom.plugins.speculative as s; s.genloom_decoders(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
