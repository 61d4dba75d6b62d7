"""The radd objective and decoders through the registry and the core's generation loop."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import run
from genloom.core.pattern import FULL
from genloom.testing import check_decoder, check_objective, tiny_model


TINY = {
    "tokenizer": {"name": "bytes"},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4},
    "objective": {"name": "radd"},
}


def _model(**objective):
    torch.manual_seed(0)
    base = dict(TINY)
    base["objective"] = {"name": "radd", **objective}
    return tiny_model(base=base)


def test_objective_contract_and_mask_token():
    for form in ("t-dce", "lambda-dce", "any-order"):
        built = _model(loss_form=form)
        assert built.ctx.mask_id == 257 and built.ctx.vocab_size == 258  # bytes + eos, then the mask
        assert built.model.objective.pattern.kind == "full"
        torch.manual_seed(1)
        out = check_objective(built, {"ids": torch.randint(0, 256, (3, 10))})
        assert {"loss", "masked_ce", "_nats", "_tokens"} <= set(out)


def test_network_gets_no_time_input_and_unmasked_outputs_are_irrelevant():
    """The objective calls the model with the noisy ids only; changing its outputs at unmasked
    positions (whatever they are) leaves the loss bit-identical."""
    built = _model()
    model, mask_id = built.model, built.ctx.mask_id
    seen = []
    forward = model.forward

    def spy(ids, *, pattern=None, state=None, valid=None, noise=0.0):
        seen.append((ids.clone(), pattern, state))
        logits = forward(ids, pattern=pattern, state=state, valid=valid)
        unmasked = (ids != mask_id).unsqueeze(-1)
        return logits + noise * torch.randn_like(logits) * unmasked

    ids = torch.randint(0, 256, (4, 16))
    losses = []
    for noise in (0.0, 1e4):
        model.forward = lambda i, noise=noise, **kw: spy(i, noise=noise, **kw)
        torch.manual_seed(5)
        losses.append(model.loss({"ids": ids})["loss"])
    model.forward = forward
    assert torch.equal(losses[0], losses[1])
    noisy, pattern, state = seen[0]
    assert pattern == FULL and state is None
    assert ((noisy == mask_id) | (noisy == ids)).all() and (noisy == mask_id).any()


def test_prompt_and_padding_are_never_noised():
    built = _model()
    mask_id = built.ctx.mask_id
    ids = torch.randint(0, 256, (64, 12))
    prompt = torch.zeros_like(ids, dtype=torch.bool)
    prompt[:, :4] = True
    scored = torch.ones(64, 11, dtype=torch.bool)
    scored[:, 8:] = False  # token-window padding after position 8
    seen = []
    forward = built.model.forward
    built.model.forward = lambda i, **kw: (seen.append(i), forward(i, **kw))[1]
    out = built.model.loss({"ids": ids, "prompt_mask": prompt, "mask": scored})
    built.model.forward = forward
    noisy = seen[0]
    assert (noisy[:, :4] == ids[:, :4]).all() and (noisy[:, 9:] == ids[:, 9:]).all()
    assert (noisy[:, 4:9] == mask_id).any()
    assert float(out["_tokens"]) == 64 * 5


def test_decoders_contract_and_prompts_kept():
    built = _model()
    for node in ({"name": "radd", "steps": 8}, {"name": "radd", "steps": 8, "cache": False},
                 "masked-diffusion", {"name": "masked-diffusion", "steps": 3, "block_length": 2, "temperature": 1.0}):
        check_decoder(built, node)


def _distinct_states_spy(model, mask_id, log):
    forward = model.forward

    def spy(ids, **kw):
        for row in ids:
            log.append(tuple(row.tolist()))
            assert (row == mask_id).any(), "the network was called on a fully decoded sequence"
        return forward(ids, **kw)

    return spy, forward


def test_cached_sampling_is_identical_with_fewer_calls():
    """RADD's caching: same samples as the uncached sampler for a seed, fewer network calls, and
    each sequence is evaluated once per distinct noisy state (<= its number of generated tokens)."""
    built = _model()
    model, mask_id = built.model, built.ctx.mask_id
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    results, logs = {}, {}
    for cache in (True, False):
        log = []
        spy, forward = _distinct_states_spy(model, mask_id, log)
        model.forward = spy
        dec = built.ctx.build("decoder", {"name": "radd", "steps": 48, "cache": cache})
        results[cache] = (run(model, prompts, dec, max_new_tokens=10, seed=7), dec.stats)
        model.forward = forward
        logs[cache] = log
    cached, uncached = results[True][0], results[False][0]
    assert cached.ids == uncached.ids
    assert cached.metrics.forward_passes["target"] < uncached.metrics.forward_passes["target"] <= 48
    per_row = results[True][1]["row_calls"]
    assert int(per_row.sum()) < int(results[False][1]["row_calls"].sum())
    assert int(per_row.max()) <= 10
    # a sequence's network evaluations = the distinct noisy states it went through
    assert len(logs[True]) == int(per_row.sum()) == len(set(logs[True]))
    assert len(set(logs[False])) == len(set(logs[True]))


def test_batch_one_nfe_equals_distinct_states():
    built = _model()
    model, mask_id = built.model, built.ctx.mask_id
    log = []
    spy, forward = _distinct_states_spy(model, mask_id, log)
    model.forward = spy
    dec = built.ctx.build("decoder", {"name": "radd", "steps": 200})
    res = run(model, [[1, 2, 3]], dec, max_new_tokens=12, seed=3)
    model.forward = forward
    calls = res.metrics.forward_passes["target"]
    assert calls == len(set(log)) == len(log) <= 12
    assert calls < 200


def test_confidence_sampler_unmasks_the_most_confident_position_each_step():
    built = _model()
    model, mask_id = built.model, built.ctx.mask_id
    canvases = []
    forward = model.forward
    model.forward = lambda ids, **kw: (canvases.append(ids.clone()), forward(ids, **kw))[1]
    res = run(model, [[40, 41, 42]], built.ctx.build("decoder", "masked-diffusion"), max_new_tokens=6, seed=0)
    model.forward = forward
    assert len(canvases) == 6 and res.metrics.forward_passes["target"] == 6
    final = torch.tensor([[40, 41, 42] + res.ids[0]])
    for before, after in zip(canvases, canvases[1:] + [final]):
        with torch.no_grad():
            logits = forward(before, pattern=FULL, valid=torch.ones_like(before, dtype=torch.bool)).double()
        logits[..., mask_id] = float("-inf")
        conf, tok = torch.softmax(logits, -1).max(-1)
        conf[before != mask_id] = -1
        best = int(conf[0].argmax())
        changed = (before != after).nonzero()[:, 1].tolist()
        assert changed == [best] and int(after[0, best]) == int(tok[0, best])
    assert (canvases[0][0, :3] == torch.tensor([40, 41, 42])).all()
