"""Context-dependent text (four sentences in a random order): the heads are right only part of the
time, blocks are accepted partially, and the output still equals greedy decoding."""

from __future__ import annotations

import pytest
import torch

import bpd_toy
from genloom.core.generation import run


@pytest.mark.slow
def test_partial_acceptance_on_sentences_equals_greedy_in_fewer_calls():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        built = bpd_toy.build(bpd_toy.model_config(d_model=48, block_size=4))
        data = bpd_toy.sentences()
        bpd_toy.train(built.model, data, 250, bpd_toy.next_token_loss, seq_len=48, lr=5e-3)
        bpd_toy.train(built.model, data, 120, lambda m, b: m.loss(b), seq_len=48, lr=5e-3, seed=1)
        built.model.eval()
        prompts = [list(b"the quick "), list(b"pack my box w"), list(b"sphinx of bl"), list(b"how ")]
        plain = run(built.model, prompts, built.ctx.build("decoder", "greedy"), max_new_tokens=64)
        out = run(built.model, prompts, built.decoder, max_new_tokens=64)
        assert out.ids == plain.ids
        calls = out.metrics.forward_passes["target"]
        assert calls < 0.7 * 64, calls
        rates = out.metrics.acceptance_rate_by_position
        assert rates[0] == 1.0 and rates[-1] < 1.0  # head 1 always agrees; later heads only sometimes
    finally:
        torch.set_num_threads(old)
