"""Self-speculative decoding with mask tokens: greedy output equals the base model's greedy output
token for token, with fewer forward passes than tokens once the adapters and sampler are trained."""

from __future__ import annotations

import pytest
import torch

import mtp_toy
from genloom.core.generation import run
from genloom.plugins.mtp.lora import GateContext
from genloom.testing import check_backbone, check_decoder, check_head, check_objective

MAX_NEW = 40


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    built = mtp_toy.build(mtp_toy.model_config(d_model=32, n_masks=3, cuts_per_sequence=4))
    data = mtp_toy.periodic()
    mtp_toy.train_base(built.model, data, 40, lr=1e-2, seq_len=24, batch_size=8)
    greedy_before = run(built.model, PROMPTS, built.ctx.build("decoder", "greedy"), max_new_tokens=MAX_NEW).ids
    mtp_toy.train_mtp(built.model, data, 60, lr=1e-2, seq_len=24, batch_size=8)
    built.model.eval()
    torch.set_num_threads(threads)
    return built, greedy_before


PROMPTS = [list(b"xyz0"), list(b"ghijklm")]  # ragged: the batch is left-padded


def test_greedy_output_equals_base_greedy_with_fewer_forward_passes(trained):
    built, greedy_before = trained
    greedy = run(built.model, PROMPTS, built.ctx.build("decoder", "greedy"), max_new_tokens=MAX_NEW)
    mtp = run(built.model, PROMPTS, built.decoder, max_new_tokens=MAX_NEW)
    assert greedy.ids == greedy_before  # MTP training left the base model's greedy decoding unchanged
    assert mtp.ids == greedy.ids  # token for token
    assert all(len(s) == MAX_NEW for s in mtp.ids)
    calls = mtp.metrics.forward_passes["target"]
    assert greedy.metrics.forward_passes["target"] == MAX_NEW
    assert calls < MAX_NEW / 2, f"{calls} forward passes for {MAX_NEW} tokens"
    assert mtp.metrics.mean_acceptance_length > 1.5


def test_equality_holds_for_one_sequence_at_a_time_and_with_a_history_processor(trained):
    built, _ = trained
    penalty = built.ctx.build("processor", {"name": "repetition-penalty", "penalty": 1.3})
    for prompts, procs in (([PROMPTS[1]], ()), (PROMPTS, (penalty,))):
        greedy = run(built.model, prompts, built.ctx.build("decoder", "greedy"), max_new_tokens=25, processors=procs)
        mtp = run(built.model, prompts, built.decoder, max_new_tokens=25, processors=procs)
        assert mtp.ids == greedy.ids


def test_untrained_adapters_still_give_exact_greedy_output():
    torch.manual_seed(3)
    built = mtp_toy.build(mtp_toy.model_config(d_model=32, n_masks=4))
    with torch.no_grad():
        for p in built.model.backbone.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)  # random adapters: drafts are mostly wrong
    greedy = run(built.model, PROMPTS, built.ctx.build("decoder", "greedy"), max_new_tokens=20)
    mtp = run(built.model, PROMPTS, built.decoder, max_new_tokens=20)
    assert mtp.ids == greedy.ids


def test_rollback_leaves_only_committed_tokens_in_the_cache(trained):
    built, _ = trained
    from genloom.core.generation import Session

    dec = built.decoder
    session = Session(built.model, PROMPTS, max_new_tokens=MAX_NEW)
    with torch.inference_mode():
        dec.start(session)
        for _ in range(3):
            commit = dec.verify(session, dec.propose(session))
            session.commit(commit)
            # the cache holds prompt + committed tokens (the pending base token is fed next step)
            assert session.state.lengths.tolist() == session.lengths.tolist()


def test_conformance_kit():
    # with the gate on everywhere the adapters take part in every check (full forward == incremental
    # decoding, rollback, gradients reach them); ungated, the backbone is the base transformer (tested
    # bit-for-bit in test_mtp_gated_lora.py), whose adapters then get no gradient by design
    for train_base in (False, True):
        check_backbone({"name": "mtp-gated-lora", "train_base": train_base, "base": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}},
                       values={"mtp_gate_context": _AlwaysOn()})
    check_head({"name": "mtp", "train_base": True})
    built = mtp_toy.build(mtp_toy.model_config(d_model=16, n_layers=1, n_masks=2))
    check_objective(built, {"ids": torch.randint(0, 256, (2, 12))})
    rows = mtp_toy.build(mtp_toy.model_config(d_model=16, n_layers=1, n_masks=2, layout="rows"))
    check_objective(rows, {"ids": torch.randint(0, 256, (2, 12))})
    built.model.backbone.base.patterns = frozenset({"causal"})  # as a recurrent backbone would say
    with pytest.raises(ValueError, match="layout=rows"):
        built.model.loss({"ids": torch.randint(0, 256, (2, 12))})
    check_decoder(built, {"name": "mtp", "n_masks": 2})


class _AlwaysOn(GateContext):
    """A gate context whose gate is on at every position (for the backbone conformance check)."""

    def put(self, gate):
        pass

    def take(self, shape):
        return torch.ones(*shape, dtype=torch.bool)


def test_runnable_config_assembles_trains_and_decodes():
    from pathlib import Path

    from genloom.testing import tiny_model

    config = Path(__file__).resolve().parents[3] / "configs" / "mtp.yaml"
    built = tiny_model(config, ["backbone.base.d_model=32", "backbone.base.n_layers=1", "backbone.base.n_heads=2"])
    out = check_objective(built, {"ids": torch.randint(0, 256, (2, 16))})
    assert "next_token" in out  # the config trains base and MTP parts jointly
    greedy = run(built.model, PROMPTS, built.ctx.build("decoder", "greedy"), max_new_tokens=8)
    assert run(built.model, PROMPTS, built.decoder, max_new_tokens=8).ids == greedy.ids


def test_quadratic_decoding_keeps_drafts_fresh_and_stays_exact(trained, monkeypatch):
    """Quadratic (a mask block after every draft, one tree-pattern pass, KVCache.keep) vs linear:
    both equal greedy; quadratic never runs a step without drafts, so it needs no more passes.
    Broken variant: the same chunk under the plain causal pattern lets chain tokens attend to the
    mask blocks before them, and the output leaves greedy decoding."""
    built, _ = trained
    greedy = run(built.model, PROMPTS, built.ctx.build("decoder", "greedy"), max_new_tokens=MAX_NEW)
    linear = run(built.model, PROMPTS, built.ctx.build("decoder", {"name": "mtp", "quadratic": False}), max_new_tokens=MAX_NEW)
    quadratic = run(built.model, PROMPTS, built.ctx.build("decoder", {"name": "mtp", "quadratic": True}), max_new_tokens=MAX_NEW)
    assert linear.ids == greedy.ids and quadratic.ids == greedy.ids
    assert quadratic.metrics.forward_passes["target"] <= linear.metrics.forward_passes["target"]
    assert len(quadratic.metrics.acceptance_lengths) == quadratic.metrics.steps * len(PROMPTS)  # drafts every step
    import genloom.plugins.mtp.decoder as decoder_module
    from genloom.core.pattern import CAUSAL

    monkeypatch.setattr(decoder_module, "tree", lambda parents, start: CAUSAL)
    broken = run(built.model, PROMPTS, built.ctx.build("decoder", {"name": "mtp", "quadratic": True}), max_new_tokens=MAX_NEW)
    assert broken.ids != greedy.ids
