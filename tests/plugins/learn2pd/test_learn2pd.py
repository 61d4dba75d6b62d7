"""Learn2PD: filter labels are 1 exactly where the step's prediction equals the final token; an
oracle filter reproduces the baseline output in fewer steps; EoTP stops once EOS is fixed."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.learn2pd.filter import Filter, collect, labels_from_run, load_filter, save_filter, train_filter
from genloom.testing import check_decoder, tiny_model

BACKBONE = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}
MDM = {"tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "backbone": BACKBONE, "objective": {"name": "radd"}}
PROMPTS = [[10, 11, 12, 13], [20], [30, 31]]


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return tiny_model(base=MDM)


def _run(built, node, prompts=PROMPTS, max_new_tokens=12, oracle=None, filt=None):
    dec = built.ctx.build("decoder", {"name": "learn2pd", **node})
    dec.oracle, dec.record = oracle, True
    if filt is not None:
        dec.filter = filt
    return run(built.model, prompts, dec, max_new_tokens=max_new_tokens), dec


def test_without_filter_it_is_the_baseline_sampler(built):
    base = run(built.model, PROMPTS, built.ctx.build("decoder", {"name": "masked-diffusion", "block_length": 4}), max_new_tokens=12)
    res, _ = _run(built, {"block_length": 4, "end_of_text": False})
    assert res.ids == base.ids and res.metrics.forward_passes == base.metrics.forward_passes


def test_labels_are_one_exactly_where_the_prediction_is_final(built):
    res, dec = _run(built, {"block_length": 4, "end_of_text": False})
    final = dec.final_canvas
    labels = labels_from_run(dec.recorded_predictions, dec.recorded_masks, final)
    for pred, m, lab in zip(dec.recorded_predictions, dec.recorded_masks, labels):
        assert torch.equal(lab[m] == 1, (pred == final)[m])
        assert bool(torch.isnan(lab[~m]).all())
    X, y = collect(built, PROMPTS, 12, {"block_length": 4})
    assert X.shape == (y.numel(), 5) and set(y.unique().tolist()) <= {0.0, 1.0}
    assert any(bool((lab[m] == 1).any()) for lab, m in zip(labels[:-1], dec.recorded_masks))  # some are final early
    # the broken variant: labels against a misaligned final output (off by one position) are caught
    shifted = labels_from_run(dec.recorded_predictions, dec.recorded_masks, final.roll(1, dims=1))
    assert any(not torch.equal(a[m], b[m]) for a, b, m in zip(shifted, labels, dec.recorded_masks))


def test_oracle_filter_reproduces_the_baseline_in_fewer_steps(built):
    base, bdec = _run(built, {"block_length": 4, "end_of_text": False})
    reference = bdec.final_canvas[:, -12:]
    res, dec = _run(built, {"block_length": 4, "end_of_text": False}, oracle=reference)
    assert res.ids == base.ids
    assert res.metrics.forward_passes["target"] < base.metrics.forward_passes["target"]
    assert res.metrics.extra["filter_accepted"] > 0


def test_broken_oracle_is_caught(built):
    """An oracle against the wrong reference (the baseline output shifted by one) changes the output."""
    base, bdec = _run(built, {"block_length": 4, "end_of_text": False})
    wrong = bdec.final_canvas[:, -12:].roll(1, dims=1)
    res, _ = _run(built, {"block_length": 4, "end_of_text": False}, oracle=wrong)
    assert res.ids != base.ids


def test_end_of_text_prediction_spends_no_step_on_padding(built):
    """A network that decodes EOS at generated position 2 first and is more confident on the padding
    after it than on positions 0 and 1: with EoTP the padding is filled at once."""
    eos, mask = built.ctx.get("eos_id"), built.ctx.mask_id

    def fake(self, session):
        canvas = session.scratch["canvas"]
        logits = torch.zeros(*canvas.shape, built.ctx.vocab_size)
        P = session.scratch["gen_start"]
        for j in range(canvas.shape[1] - P):
            logits[:, P + j, 65 + j] = 3.0 if j < 2 else 10.0 - 0.1 * j
        logits[:, P + 2, eos] = 50.0  # the most confident prediction: EOS at position 2
        return logits

    def go(eotp):
        dec = built.ctx.build("decoder", {"name": "learn2pd", "end_of_text": eotp})
        dec.network = fake.__get__(dec)
        return run(built.model, [[1, 2, 3]], dec, max_new_tokens=10, eos_id=eos)
    with_eotp, without = go(True), go(False)
    assert with_eotp.ids == without.ids == [[65, 66, eos]]  # generation stops at EOS either way
    assert with_eotp.metrics.extra["decode_steps"] == 3  # EOS, then positions 0 and 1; the tail is filled
    assert without.metrics.extra["decode_steps"] == 10  # one step per position: the padding first
    assert with_eotp.metrics.extra["eos_filled"] == 7


def test_filter_training_round_trip(built, tmp_path):
    X, y = collect(built, PROMPTS, 12, {"block_length": 4})
    filt = train_filter(X, y, epochs=30)
    path = tmp_path / "filter.safetensors"
    save_filter(filt, path)
    again = load_filter(path)
    torch.testing.assert_close(again(X), filt(X))
    res, _ = _run(built, {"block_length": 4, "filter_path": str(path), "filter_threshold": 0.5})
    assert all(len(ids) <= 12 for ids in res.ids)
    always = Filter()
    torch.nn.init.constant_(always.net[2].bias, 100.0)  # accepts everything: one step per block
    res, _ = _run(built, {"block_length": 4, "end_of_text": False}, filt=always)
    assert res.metrics.forward_passes["target"] == 3


def test_contract_and_config_errors(built):
    check_decoder(built, "learn2pd")
    from genloom.core.errors import ConfigError
    from genloom.plugins.learn2pd import Learn2PDConfig
    with pytest.raises(ValueError, match="filter_threshold"):
        Learn2PDConfig(filter_threshold=0.0)
    with pytest.raises(ConfigError, match="filter"):
        built.ctx.build("decoder", {"name": "learn2pd", "filter_path": "/nonexistent/f.safetensors"})
