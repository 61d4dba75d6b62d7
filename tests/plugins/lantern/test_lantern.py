"""LANTERN (decoder ``lantern``): exact with the relaxation off, within delta of the target otherwise.

The output law of one decoded token is known exactly by enumeration (:func:`output_law` of the rule
at the target's and the draft's next-token laws), so the decoder's samples are checked against it
by chi-square; with neighbourhood size 1 or delta 0 that law is the target's.
"""

import pytest
import torch

from genloom.core.generation import run
from genloom.testing import check_decoder, exact_continuations, tiny_model
from genloom.toolkit.acceptance import ExactAcceptance, RelaxedAcceptance, output_law, total_variation
from genloom.toolkit.image_ar import latent_neighbours, token_latents

VOCAB = 6
PROMPT = [1, 4, 2]


def model_config(d_model=16, n_layers=1, vocab=VOCAB):
    return {
        "tokenizer": {"name": "ids", "vocab_size": vocab},
        "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
        "backbone": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": 2},
        "objective": {"name": "next-token"},
    }


CONFIG = model_config()


@pytest.fixture(scope="module")
def target():
    built = tiny_model(base=CONFIG, seed=0)
    built.model.eval()
    return built


def decoder(built, gamma=1, noise=1.0, **fields):
    """A lantern decoder whose draft is the target's architecture with noisy weights."""
    dec = built.ctx.build("decoder", {"name": "lantern", "draft": CONFIG, "gamma": gamma, **fields})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p_draft, p_target in zip(dec.draft.parameters(), built.model.parameters()):
            p_draft.copy_(p_target + noise * p_target.std() * torch.randn(p_target.shape, generator=gen))
    return dec


def next_laws(built, dec):
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        p = torch.softmax(built.model(ids)[:, -1].double(), -1)
        q = torch.softmax(dec.draft(ids)[:, -1].double(), -1)
    return p, q


def one_token_counts(built, dec, draws, seed=11):
    out = run(built.model, [PROMPT] * draws, dec, max_new_tokens=1, seed=seed)
    return torch.bincount(torch.tensor([ids[0] for ids in out.ids]), minlength=VOCAB).double(), out


def chisquare_pvalue(observed, law):
    stats = pytest.importorskip("scipy.stats")
    expected = law * observed.sum()
    keep = expected > 0
    return stats.chisquare(observed[keep].numpy(), expected[keep].numpy()).pvalue


def test_conformance_and_config_errors(target):
    result = check_decoder(target, {"name": "lantern", "draft": CONFIG, "gamma": 3})
    assert result.metrics.forward_passes["draft"] > 0
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="delta"):
        target.ctx.build("decoder", {"name": "lantern", "draft": CONFIG, "delta": 1.5})
    with pytest.raises(ConfigError, match="neighbourhood_size"):
        target.ctx.build("decoder", {"name": "lantern", "draft": CONFIG, "neighbourhood_size": 0})
    with pytest.raises(ConfigError, match="draft model is required"):
        target.ctx.build("decoder", {"name": "lantern"})


def test_relaxation_off_is_declared_exact(target):
    assert decoder(target, neighbourhood_size=1).exact == "sampling"
    assert decoder(target, delta=0.0).exact == "sampling"
    assert decoder(target, neighbourhood_size=4, delta=0.3).exact is None
    assert isinstance(decoder(target, neighbourhood_size=1).rule(target.model), ExactAcceptance)
    assert isinstance(decoder(target, neighbourhood_size=4, delta=0.3).rule(target.model), RelaxedAcceptance)


@pytest.mark.parametrize("fields", [{"neighbourhood_size": 1, "delta": 0.5}, {"neighbourhood_size": VOCAB, "delta": 0.0}])
def test_relaxation_off_samples_the_target_law_fast(target, fields):
    """Small variant (4k draws): one decoded token follows the target's next-token law."""
    dec = decoder(target, **fields)
    p, q = next_laws(target, dec)
    counts, _ = one_token_counts(target, dec, 4_000)
    assert chisquare_pvalue(counts, p[0]) > 1e-3


@pytest.mark.slow
def test_relaxation_off_continuations_follow_the_target_law():
    """Chi-square on 20k two-token continuations (gamma 2, neighbourhood size 1) against the exact
    target law by enumeration; the draft's own law fails the same test."""
    target = tiny_model(base=CONFIG, seed=0)
    target.model.eval()
    dec = decoder(target, gamma=2, neighbourhood_size=1)
    draws = 20_000
    out = run(target.model, [PROMPT] * draws, dec, max_new_tokens=2, seed=5)
    exact = exact_continuations(target.model, PROMPT, 2, (), VOCAB)
    exact_draft = exact_continuations(dec.draft, PROMPT, 2, (), VOCAB)
    counts = {s: 0 for s in exact}
    for ids in out.ids:
        counts[tuple(ids)] += 1
    observed = torch.tensor([counts[s] for s in exact], dtype=torch.float64)
    assert chisquare_pvalue(observed, torch.tensor([exact[s] for s in exact], dtype=torch.float64)) > 1e-3
    assert chisquare_pvalue(observed, torch.tensor([exact_draft[s] for s in exact], dtype=torch.float64)) < 1e-6
    assert 0 < out.metrics.mean_acceptance_length < 2


def test_relaxed_token_law_is_within_delta_and_is_sampled(target):
    """delta 0.3 over all tokens: the enumerated law of one decoded token is within delta of the
    target's (and differs from it); 20k decoded tokens follow that law, not the target's."""
    delta = 0.3
    dec = decoder(target, neighbourhood_size=VOCAB, delta=delta)
    p, q = next_laws(target, dec)
    rule = dec.rule(target.model)
    law = output_law(rule, p, q)[0]
    assert 0.02 < float(total_variation(law, p[0])) <= delta
    counts, out = one_token_counts(target, dec, 20_000)
    assert chisquare_pvalue(counts, law) > 1e-3
    assert chisquare_pvalue(counts, p[0]) < 1e-6
    exact_rate = float(torch.minimum(p, q).sum())
    assert out.metrics.mean_acceptance_length > exact_rate + 0.02  # the relaxation accepts more


def test_broken_verification_alignment_is_caught(target, monkeypatch):
    """Broken variant: verifying draft i against the target's law one position later (an off-by-one
    between drafts and target logits) no longer samples the enumerated law."""
    import genloom.plugins.lantern.decoder as module

    original = module.verify_chain
    monkeypatch.setattr(module, "verify_chain", lambda rule, tp, dp, d, g: original(rule, torch.cat([tp[:, 1:], tp[:, -1:]], 1), dp, d, g))
    dec = decoder(target, neighbourhood_size=VOCAB, delta=0.3)
    p, q = next_laws(target, dec)
    law = output_law(dec.rule(target.model), p, q)[0]
    counts, _ = one_token_counts(target, dec, 20_000)
    assert chisquare_pvalue(counts, law) < 1e-3  # the property check above (p-value > 1e-3) fails


def test_neighbourhoods_come_from_the_token_latents(target):
    """Without an image tokenizer the latents are the target's input embeddings; the rule's
    neighbourhoods are their nearest tokens, each token first."""
    dec = decoder(target, neighbourhood_size=3, delta=0.2)
    rule = dec.rule(target.model)
    expected = latent_neighbours(token_latents(target.model), 3)
    assert torch.equal(rule.neighbours, expected) and rule.neighbours[:, 0].tolist() == list(range(VOCAB))
    assert dec.rule(target.model) is rule  # computed once per model


def test_greedy_draft_equal_to_the_target_is_always_accepted(target):
    """State bookkeeping: a draft equal to the target passes every test (p = q), gamma per round."""
    dec = decoder(target, gamma=3, noise=0.0, neighbourhood_size=4, delta=0.2)
    out = run(target.model, [[1, 2, 3, 4], [5], [0, 2]], dec, max_new_tokens=13, seed=2)
    assert all(len(ids) == 13 for ids in out.ids)
    assert out.metrics.mean_acceptance_length == 3


@pytest.mark.slow
def test_on_embedded_digits_relaxation_accepts_more():
    """The image AR target and draft over VQ tokens of the digits (trained for a few hundred steps):
    relaxed acceptance over the codebook's neighbourhoods accepts more drafts per round than exact
    speculative sampling, and the decoded sequences are images."""
    import image_ar_helpers

    target, draft = image_ar_helpers.trained_pair()
    tok = target.model.tokenizer
    prompts = [[tok.class_token(c)] for c in range(tok.num_classes)] * 4
    lengths = {}
    for k, delta in [(1, 0.0), (32, 0.4)]:
        dec = target.ctx.build("decoder", {"name": "lantern", "draft": image_ar_helpers.DRAFT, "gamma": 4, "neighbourhood_size": k, "delta": delta})
        dec._draft = draft.model
        out = run(target.model, prompts, dec, max_new_tokens=tok.tokens_per_image, seed=0)
        lengths[k] = out.metrics.mean_acceptance_length
    assert lengths[32] > lengths[1] > 1.0
    images = tok.decode_batch(torch.tensor([[min(i, tok.codebook_size - 1) for i in ids] for ids in out.ids]))
    assert images.shape == (len(prompts), 1, 8, 8)


def test_processors_act_on_target_and_draft_alike(target):
    """With a temperature processor and the relaxation off, one decoded token follows the processed
    target law (4k draws); the unprocessed law fails the same check."""
    procs = [target.ctx.build("processor", {"name": "temperature", "temperature": 0.5})]
    dec = decoder(target, neighbourhood_size=1)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        logits = target.model(ids)[:, -1].double()
    out = run(target.model, [PROMPT] * 4_000, dec, max_new_tokens=1, seed=13, processors=procs)
    counts = torch.bincount(torch.tensor([row[0] for row in out.ids]), minlength=VOCAB).double()
    assert chisquare_pvalue(counts, torch.softmax(logits / 0.5, -1)[0]) > 1e-3
    assert chisquare_pvalue(counts, torch.softmax(logits, -1)[0]) < 1e-3
