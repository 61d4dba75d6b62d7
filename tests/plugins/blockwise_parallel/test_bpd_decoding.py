"""Blockwise parallel decoding: greedy output equals plain greedy decoding token for token, with about
N / (mean accepted block size) + 1 model calls (merged verify/propose step)."""

from __future__ import annotations

import pytest
import torch

import bpd_toy
from genloom.core.generation import Session, run
from genloom.testing import check_decoder

MAX_NEW = 40
PROMPTS = [list(b"xyz0"), list(b"ghijklm")]  # ragged: the batch is left-padded


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    built = bpd_toy.build(bpd_toy.model_config(block_size=4))
    data = bpd_toy.periodic()
    bpd_toy.train(built.model, data, 40, bpd_toy.next_token_loss, batch_size=8, seq_len=24)
    greedy_before = run(built.model, PROMPTS, built.ctx.build("decoder", "greedy"), max_new_tokens=MAX_NEW).ids
    bpd_toy.train(built.model, data, 40, lambda m, b: m.loss(b), batch_size=8, seq_len=24, seed=1)
    built.model.eval()
    torch.set_num_threads(threads)
    return built, greedy_before


def greedy(built, prompts, max_new, processors=()):
    return run(built.model, prompts, built.ctx.build("decoder", "greedy"), max_new_tokens=max_new, processors=processors)


def test_output_equals_greedy_with_fewer_model_calls(trained):
    built, greedy_before = trained
    plain = greedy(built, PROMPTS, MAX_NEW)
    blockwise = run(built.model, PROMPTS, built.decoder, max_new_tokens=MAX_NEW)
    assert plain.ids == greedy_before  # frozen-base training left greedy decoding unchanged
    assert blockwise.ids == plain.ids  # token for token
    calls = blockwise.metrics.forward_passes["target"]
    steps = blockwise.metrics.steps
    assert calls == steps + 1  # merged verify/propose: one call per step plus the prompt
    assert calls < MAX_NEW / 2, f"{calls} model calls for {MAX_NEW} tokens"
    mean_block = blockwise.metrics.mean_acceptance_length
    assert mean_block > 2.0
    # every step commits its accepted block; so the calls are about N / mean block + 1
    assert abs(calls - (MAX_NEW / mean_block + 1)) <= 1.0


def test_equality_with_random_heads_one_sequence_and_a_history_processor(trained):
    built, _ = trained
    penalty = built.ctx.build("processor", {"name": "repetition-penalty", "penalty": 1.3})
    for prompts, procs in (([PROMPTS[1]], ()), (PROMPTS, (penalty,))):
        assert run(built.model, prompts, built.decoder, max_new_tokens=25, processors=procs).ids == greedy(built, prompts, 25, procs).ids
    torch.manual_seed(1)
    fresh = bpd_toy.build(bpd_toy.model_config(block_size=5))
    with torch.no_grad():
        for layer in fresh.model.head.proposal_layers:
            layer.down.weight.normal_(0, 1.0)  # nonsense proposals: mostly rejected
    out = run(fresh.model, PROMPTS, fresh.decoder, max_new_tokens=20)
    assert out.ids == greedy(fresh, PROMPTS, 20).ids
    assert out.metrics.mean_acceptance_length < 2.0


def test_cache_holds_exactly_the_committed_tokens_after_each_step(trained):
    built, _ = trained
    dec = built.decoder
    session = Session(built.model, PROMPTS, max_new_tokens=MAX_NEW)
    with torch.inference_mode():
        dec.start(session)
        for _ in range(4):
            session.commit(dec.verify(session, dec.propose(session)))
            assert session.state.lengths.tolist() == session.lengths.tolist()


def test_top_k_acceptance_accepts_tokens_in_the_base_top_k(trained):
    built, _ = trained
    torch.manual_seed(2)
    fresh = bpd_toy.build(bpd_toy.model_config(block_size=4))
    fresh.model.load_state_dict(built.model.state_dict())
    with torch.no_grad():
        for layer in fresh.model.head.proposal_layers:
            layer.down.weight.add_(torch.randn_like(layer.down.weight) * 0.5)  # perturbed heads
    exact = run(fresh.model, PROMPTS, fresh.decoder, max_new_tokens=24)
    loose_dec = fresh.ctx.build("decoder", {"name": "blockwise-parallel", "accept_top_k": 5})
    loose = run(fresh.model, PROMPTS, loose_dec, max_new_tokens=24)
    assert loose.metrics.mean_acceptance_length >= exact.metrics.mean_acceptance_length
    # every committed token is in the base head's top 5 given the committed prefix
    with torch.no_grad():
        for prompt, seq in zip(PROMPTS, loose.ids):
            ids = torch.tensor([prompt + seq])
            logits = fresh.model(ids[:, :-1])[0, len(prompt) - 1 :]
            top = logits.topk(5, -1).indices
            assert all(t in top[j].tolist() for j, t in enumerate(seq))


def test_block_size_option_and_conformance(trained):
    built, _ = trained
    two = run(built.model, PROMPTS, built.ctx.build("decoder", {"name": "blockwise-parallel", "block_size": 2}), max_new_tokens=20)
    assert two.ids == greedy(built, PROMPTS, 20).ids
    assert max(two.metrics.acceptance_lengths) <= 2
    with pytest.raises(ValueError, match="exceeds"):
        run(built.model, PROMPTS, built.ctx.build("decoder", {"name": "blockwise-parallel", "block_size": 9}), max_new_tokens=4)
    check_decoder(built, {"name": "blockwise-parallel"})


def test_runnable_config_assembles_trains_and_decodes():
    from pathlib import Path

    from genloom.testing import check_objective, tiny_model

    config = Path(__file__).resolve().parents[3] / "configs" / "blockwise-parallel.yaml"
    built = tiny_model(config, ["backbone.d_model=32", "backbone.n_layers=1", "backbone.n_heads=2"])
    out = check_objective(built, {"ids": torch.randint(0, 256, (2, 16))})
    assert set(out) >= {"ce_head1", "ce_head4", "acc_head4"}
    assert run(built.model, PROMPTS, built.decoder, max_new_tokens=8).ids == greedy(built, PROMPTS, 8).ids
