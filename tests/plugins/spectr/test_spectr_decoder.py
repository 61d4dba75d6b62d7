"""The ``spectr`` decoder on the core loop: state bookkeeping, acceptance, exact distribution."""


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


SMALL = model_config()


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    built = tiny_model(base=SMALL)
    built.model.eval()
    return built


def noisy_copy(built, node, noise, seed=1):
    """Build ``node`` (a decoder with draft config SMALL) and set its draft to the target plus noise."""
    dec = built.ctx.build("decoder", {"draft": SMALL, **node})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p_draft, p_target in zip(dec.draft.parameters(), built.model.parameters()):
            p_draft.copy_(p_target + noise * p_target.std() * torch.randn(p_target.shape, generator=gen))
    return dec


def test_conformance_and_config_errors(target):
    result = check_decoder(target, {"name": "spectr", "draft": SMALL, "gamma": 3, "num_drafts": 3})
    assert result.metrics.forward_passes["draft"] > 0
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="draft model is required"):
        target.ctx.build("decoder", {"name": "spectr"})
    with pytest.raises(ConfigError, match="rho"):
        target.ctx.build("decoder", {"name": "spectr", "draft": SMALL, "num_drafts": 2, "rho": 3.0})
    with pytest.raises(ConfigError, match="num_drafts"):
        target.ctx.build("decoder", {"name": "spectr", "draft": SMALL, "num_drafts": 0})


def test_a_draft_equal_to_the_target_is_always_accepted(target):
    """State bookkeeping: if a cache were misaligned after reorder/rollback/restore, the draft's
    distributions would differ from the target's and drafts would be rejected."""
    prompts = [[1, 2, 3, 4], [5], [0, 2]]
    gamma, k, max_new = 3, 3, 17
    dec = noisy_copy(target, {"name": "spectr", "gamma": gamma, "num_drafts": k}, noise=0.0)
    out = run(target.model, prompts, dec, max_new_tokens=max_new, seed=3)
    m = out.metrics
    assert all(len(ids) == max_new for ids in out.ids)
    assert m.mean_acceptance_length == gamma
    assert m.forward_passes["target"] == 1 + -(-max_new // (gamma + 1))


def test_more_drafts_give_longer_acceptance_on_the_core_loop(target):
    prompts = [[i % VOCAB, (3 * i + 1) % VOCAB] for i in range(64)]
    lengths = {}
    for k in (1, 4):
        dec = noisy_copy(target, {"name": "spectr", "gamma": 4, "num_drafts": k}, noise=0.6)
        lengths[k] = run(target.model, prompts, dec, max_new_tokens=24, seed=0).metrics.mean_acceptance_length
    assert lengths[1] + 0.3 < lengths[4]  # measured 0.98 -> 1.70


@pytest.mark.slow
def test_sampled_continuations_follow_the_target_distribution(target):
    """End to end with k = 3 drafts: 2-token continuations vs the enumerated target distribution."""
    stats = pytest.importorskip("scipy.stats")
    procs = [target.ctx.build("processor", {"name": "temperature", "temperature": 0.7})]
    prompt = [1, 4, 2]
    draws = 12_000
    dec = noisy_copy(target, {"name": "spectr", "gamma": 2, "num_drafts": 3}, noise=1.0)
    out = run(target.model, [prompt] * draws, dec, max_new_tokens=2, processors=procs, seed=321)
    exact_target = exact_continuations(target.model, prompt, 2, procs, VOCAB)
    exact_draft = exact_continuations(dec.draft, prompt, 2, procs, VOCAB)
    counts = {seq: 0 for seq in exact_target}
    for ids in out.ids:
        counts[tuple(ids)] += 1
    observed = [counts[s] for s in exact_target]
    for exact, check in ((exact_target, lambda pv: pv > 1e-3), (exact_draft, lambda pv: pv < 1e-6)):
        expected = [exact[s] for s in exact_target]
        total = sum(expected)
        assert check(stats.chisquare(observed, [e * draws / total for e in expected]).pvalue)
    assert 0 < out.metrics.mean_acceptance_length < 2


def test_plugin_package_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, genloom.plugins.spectr as s; s.genloom_decoders(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
