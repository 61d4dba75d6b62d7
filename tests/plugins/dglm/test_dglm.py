"""DGLM: the logistic-regression classifier's gradient is the analytic w (y - sigma(w.z + b));
guidance scale 0 is unguided sampling exactly and guidance raises the classifier's attribute rate
of sampled proposals; the AR decoder depends on z through the soft prompt and its cached decoding
after the soft prefix equals the full forward; a short training lowers both losses."""

from __future__ import annotations

import math

import pytest
import torch

from genloom.core.errors import ConfigError
from genloom.core.generation import run
from genloom.plugins.dglm import classifier as classifier_module
from genloom.plugins.dglm.classifier import LogisticAttribute
from genloom.plugins.dglm.model import DglmBackbone, run_decoder
from genloom.plugins.dglm.objective import dglm_losses
from genloom.testing import check_decoder, check_objective, tiny_model

VOCAB = 11


def _tiny(seed: int = 0, double: bool = True):
    base = {
        "tokenizer": {"name": "ids", "vocab_size": VOCAB, "eos_id": 0},
        "head": {"name": "lm"},
        "backbone": {"name": "dglm", "latent_dim": 6, "prompt_vectors": 3, "diffusion_steps": 100, "denoiser_width": 32, "denoiser_layers": 2,
                     "base": {"name": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2},
                     "encoder": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}},
        "objective": {"name": "dglm", "prefix_length": 4},
        "decoder": {"name": "dglm", "steps": 8},
    }
    b = tiny_model(base=base, seed=seed)
    if double:
        b.model.double()
    b.model.eval()
    return b


# -- the attribute classifier -------------------------------------------------------------------

def gradient_matches_autograd(clf: LogisticAttribute, z: torch.Tensor) -> bool:
    """``clf.gradient`` == autograd of ``log_prob`` == ``w (y - sigma(w.z + b))``, both classes, to 1e-10."""
    for y in (0, 1):
        zz = z.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(clf.log_prob(zz, y).sum(), zz)
        analytic = clf.weight[None] * (y - 1 / (1 + torch.exp(-(z @ clf.weight + clf.bias))))[:, None]
        got = clf.gradient(z, y)
        if not (torch.allclose(got, auto, atol=1e-10, rtol=0) and torch.allclose(got, analytic, atol=1e-10, rtol=0)):
            return False
    return True


def test_classifier_gradient_is_analytic_and_equals_autograd(monkeypatch):
    g = torch.Generator().manual_seed(0)
    clf = LogisticAttribute(torch.randn(7, generator=g, dtype=torch.float64), 0.3)
    z = 2 * torch.randn(50, 7, generator=g, dtype=torch.float64)
    assert gradient_matches_autograd(clf, z)
    # a broken variant: the wrong sign (descends log p(y | z))
    monkeypatch.setattr(LogisticAttribute, "gradient", lambda self, z, y=1: (self.probability(z) - y)[..., None] * self.weight.to(z))
    assert not gradient_matches_autograd(clf, z)


def test_classifier_fit_separates_a_linear_attribute():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(400, 5, generator=g, dtype=torch.float64)
    labels = (z[:, 0] - z[:, 2] > 0).long()
    clf = LogisticAttribute.fit(z, labels)
    assert clf.accuracy(z, labels) > 0.95
    assert clf.weight[0] > 0 > clf.weight[2]


def test_keyword_labels():
    assert classifier_module.keyword_labels([b"x = self.y", b"return 1", "self"], "self").tolist() == [1, 0, 1]


# -- guided sampling of the proposal ------------------------------------------------------------

def _proposals(b, guide, n=4, seed=5, stochastic=True):
    backbone = b.model.backbone
    prefix = torch.randint(1, VOCAB, (n, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        condition = backbone.prefix_features(prefix)
        return backbone.sample_proposal(condition, 10, stochastic=stochastic, generator=torch.Generator().manual_seed(seed), guide=guide).x


def _classifier(latent_dim: int, seed: int = 2) -> LogisticAttribute:
    g = torch.Generator().manual_seed(seed)
    return LogisticAttribute(torch.randn(latent_dim, generator=g, dtype=torch.float64), 0.0)


def test_guidance_scale_zero_is_unguided_sampling_exactly(monkeypatch):
    b = _tiny()
    clf = _classifier(6)
    for stochastic in (True, False):
        assert torch.equal(_proposals(b, clf.guide(0.0), stochastic=stochastic), _proposals(b, None, stochastic=stochastic))
    assert not torch.equal(_proposals(b, clf.guide(1.0)), _proposals(b, None))
    # end to end: the decoder with a classifier at scale 0 writes the same text as without one
    prompts = [[1, 2, 3, 4], [5, 6]]
    plain = run(b.model, prompts, b.ctx.build("decoder", {"name": "dglm", "steps": 6}), max_new_tokens=5, seed=0)
    zero = b.ctx.build("decoder", {"name": "dglm", "steps": 6, "guidance_scale": 0.0})
    zero.classifier = clf
    assert run(b.model, prompts, zero, max_new_tokens=5, seed=0).ids == plain.ids
    # a broken variant: a guide that also renormalises the prediction onto the encoder's sphere is not unguided at scale 0
    sphere = lambda z: math.sqrt(6) * z / z.norm(dim=-1, keepdim=True)  # noqa: E731
    monkeypatch.setattr(LogisticAttribute, "guide", lambda self, scale, y=1: lambda z: sphere(z + scale * self.gradient(z, y)))
    assert not torch.equal(_proposals(b, clf.guide(0.0)), _proposals(b, None))


def attribute_rates(b, clf, scale: float, target: int = 1, n: int = 200) -> tuple[float, float]:
    """The classifier's attribute rate (p > 1/2) of ``n`` unguided and ``n`` guided proposals, same seed."""
    unguided = _proposals(b, None, n=n)
    guided = _proposals(b, clf.guide(scale, target), n=n)
    return float((clf.probability(unguided) > 0.5).double().mean()), float((clf.probability(guided) > 0.5).double().mean())


def test_guidance_raises_the_attribute_rate(monkeypatch):
    b = _tiny()
    clf = _classifier(6)
    plain, guided = attribute_rates(b, clf, 3.0)
    assert guided > plain + 0.2, (plain, guided)
    plain0, away = attribute_rates(b, clf, 3.0, target=0)
    assert away < plain0 - 0.1, (plain0, away)
    # a broken variant: the wrong-sign gradient steers away from the attribute
    monkeypatch.setattr(LogisticAttribute, "gradient", lambda self, z, y=1: (self.probability(z) - y)[..., None] * self.weight.to(z))
    plain, broken = attribute_rates(b, clf, 3.0)
    assert not broken > plain + 0.2


# -- the AR decoder conditioned through the soft prompt -----------------------------------------

def _decoder_logits(b, z, ids, valid=None, state=None):
    backbone = b.model.backbone
    h, v = backbone.decoder_inputs(z, b.model.head.embed(ids), valid)
    return run_decoder(b.model, h, v, state)


def cached_equals_full(b, z, ids, prefill: int = 3) -> bool:
    """Prefill ``[soft(z) | ids[:, :prefill]]``, then feed the rest token by token through the model
    (as the decoder does): the logits equal one full forward over ``[soft(z) | ids]`` to 1e-10."""
    with torch.no_grad():
        full = _decoder_logits(b, z, ids)
        state = b.model.init_state(ids.shape[0], 64)
        steps = [_decoder_logits(b, z, ids[:, :prefill], state=state)[:, -prefill:]]  # the token rows
        for i in range(prefill, ids.shape[1]):
            steps.append(b.model(ids[:, i : i + 1], state=state))
        return torch.allclose(torch.cat(steps, 1), full[:, -ids.shape[1] :], atol=1e-10, rtol=0)


def test_decoder_depends_on_z_through_the_soft_prompt():
    b = _tiny()
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    z1, z2 = torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        assert (_decoder_logits(b, z1, ids) - _decoder_logits(b, z2, ids)).abs().max() > 1e-3
        # a broken variant: a soft prompt that ignores z (a constant prefix) leaves the logits unchanged
        b.model.backbone.to_prompt[-1].weight.zero_()
        assert torch.equal(_decoder_logits(b, z1, ids), _decoder_logits(b, z2, ids))


def test_cached_decoding_after_the_soft_prefix_equals_the_full_forward(monkeypatch):
    b = _tiny()
    ids = torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert cached_equals_full(b, z, ids)
    # left-padded prompts: the soft prompt then padding then tokens, as the decoder's prefill
    valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    with torch.no_grad():
        padded = _decoder_logits(b, z, ids[:, :4], valid)[:, -1]
        alone = _decoder_logits(b, z[:1], ids[:1, 2:4])[:, -1]
        assert torch.allclose(padded[:1], alone, atol=1e-10, rtol=0)
    # a broken variant: a prefill without the soft prompt is not the model the full forward scores
    original = DglmBackbone.decoder_inputs
    calls = []

    def drop_prompt_in_prefill(self, z, embedded, valid=None):
        calls.append(embedded.shape[1])
        h, v = original(self, z, embedded, valid)
        return (h[:, self.prompt_vectors :], v) if len(calls) > 1 else (h, v)

    monkeypatch.setattr(DglmBackbone, "decoder_inputs", drop_prompt_in_prefill)
    assert not cached_equals_full(b, z, ids)


def test_decoder_runs_on_the_shared_loop_and_conforms():
    b = _tiny(double=False)
    result = check_decoder(b, {"name": "dglm", "steps": 4}, prompts=((1, 2, 3), (4, 5)), max_new_tokens=5)
    assert result.metrics.forward_passes["proposal-denoiser"] == 4


def _tiny_backbone_node():
    return {"name": "dglm", "latent_dim": 4, "prompt_vectors": 2, "diffusion_steps": 10, "denoiser_width": 8, "denoiser_layers": 1,
            "base": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
            "encoder": {"name": "transformer", "d_model": 8, "n_layers": 1, "n_heads": 2}}


def test_guided_decoder_fits_its_classifier_on_stdlib_text():
    base = {
        "tokenizer": {"name": "bytes"},
        "head": {"name": "lm"},
        "backbone": _tiny_backbone_node(),
        "objective": {"name": "dglm", "prefix_length": 4},
        "decoder": {"name": "dglm", "steps": 3},
    }
    b = tiny_model(base=base, seed=0)
    b.model.eval()
    dec = b.ctx.build("decoder", {"name": "dglm", "steps": 3, "guidance_scale": 2.0, "classifier_windows": 60, "keyword": "("})
    out = run(b.model, [list(b"def f"), list(b"x = ")], dec, max_new_tokens=4, seed=0)
    assert dec.classifier is not None and dec.classifier.weight.shape == (4,)
    assert 0.0 <= out.metrics.extra["proposal_attribute_rate"] <= 1.0


# -- training ----------------------------------------------------------------------------------

def test_objective_has_gradients_and_short_training_lowers_both_losses():
    b = _tiny(double=False)
    b.model.train()
    g = torch.Generator().manual_seed(0)
    # windows whose continuation is a function of a per-row token: the continuation is learnable from z
    start = torch.randint(1, VOCAB, (32, 1), generator=g)
    ids = (start + torch.arange(12)[None] * torch.randint(1, 3, (32, 1), generator=g)) % (VOCAB - 1) + 1
    check_objective(b, {"ids": ids[:8]})
    b.model.zero_grad()
    opt = torch.optim.Adam(b.model.parameters(), lr=3e-3)

    def losses():
        with torch.no_grad():
            out = dglm_losses(b.model, ids, 4, 0.25, torch.Generator().manual_seed(9))
        return float(out["reconstruction"]), float(out["diffusion"])

    torch.manual_seed(0)
    before = losses()
    for _ in range(40):
        loss = b.model.loss({"ids": ids})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = losses()
    assert after[0] < 0.7 * before[0] and after[1] < 0.8 * before[1], (before, after)


def test_a_prefix_longer_than_the_window_is_a_config_error():
    base = {"data": {"name": "pystdlib", "seq_len": 8}, "tokenizer": {"name": "bytes"}, "head": {"name": "lm"},
            "backbone": _tiny_backbone_node(), "objective": {"name": "dglm", "prefix_length": 8}}
    with pytest.raises(ConfigError, match="objective.prefix_length"):
        tiny_model(base=base, seed=0)
