"""Context-dependent text (four sentences in a random order): drafts are accepted only partially,
and the output still equals the base model's greedy decoding."""

from __future__ import annotations

import pytest
import torch

import mtp_toy
from genloom.core.generation import run


@pytest.mark.slow
def test_partial_acceptance_on_sentences_equals_greedy_in_fewer_passes():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        built = mtp_toy.build(mtp_toy.model_config(d_model=48, n_masks=3, cuts_per_sequence=6))
        data = mtp_toy.stream()
        mtp_toy.train_base(built.model, data, 250, lr=5e-3, seq_len=48)
        prompts = [list(b"the quick "), list(b"pack my box w"), list(b"sphinx of bl"), list(b"how ")]
        before = run(built.model, prompts, built.ctx.build("decoder", "greedy"), max_new_tokens=64)
        out = mtp_toy.train_mtp(built.model, data, 200, lr=5e-3, seq_len=48)
        assert out["consistency"] > 0 and out["mask_ce"] < 5.0
        built.model.eval()
        plain = run(built.model, prompts, built.ctx.build("decoder", "greedy"), max_new_tokens=64)
        res = run(built.model, prompts, built.decoder, max_new_tokens=64)
        assert plain.ids == before.ids  # the base model is untouched by MTP training
        assert res.ids == plain.ids
        assert res.metrics.forward_passes["target"] < 0.8 * 64
        assert 0.3 < res.metrics.mean_acceptance_length < 3.0  # partial acceptance
    finally:
        torch.set_num_threads(old)
