"""FReTNA: every source update costs exactly one NAT pass whatever the output length, each partial
translation is the NAT model's translation of that source prefix (the previous one fully
replaced), and the last equals the offline nat-ctc decode of the whole source."""

from __future__ import annotations

import pytest
import torch

from genloom.core.generation import Generator
from genloom.plugins.fretna.decoder import updates_for
from genloom.plugins.fretna.retranslate import Retranslator, erasure
from genloom.testing import tiny_model

S = 6


def _model(decoder=None, seed=0):
    base = {
        "data": {"name": "seq2seq", "source_length": S, "target_length": 7},
        "tokenizer": {"name": "ids", "vocab_size": 6, "eos_id": 0},
        "head": {"name": "ctc", "upsample_ratio": 2},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "nat-ctc"},
        "decoder": decoder or {"name": "fretna"},
    }
    b = tiny_model(base=base, seed=seed)
    with torch.no_grad():  # larger weights, so that outputs differ between prefixes
        for p in b.model.parameters():
            p.mul_(10.0)
    b.model.eval()
    return b


SOURCES = [[1, 2, 3, 4, 5], [3], [5, 4, 3, 2, 1, 2]]


def _offline(gen, sources):
    return gen.generate(source=sources, max_new_tokens=12, decoder="nat-ctc").ids


@pytest.mark.parametrize("update_every", [1, 2, 4])
def test_one_nat_pass_per_source_update_and_each_partial_replaced(update_every):
    b = _model({"name": "fretna", "update_every": update_every})
    gen = Generator(b)
    result = gen.generate(source=SOURCES, max_new_tokens=12)
    updates = [updates_for(len(s), update_every) for s in SOURCES]
    assert result.metrics.forward_passes == {"target": max(updates)}
    assert result.metrics.extra["source_updates"] == updates
    # every partial is the offline translation of its source prefix (nothing kept from before)
    for row, source in enumerate(SOURCES):
        partials = result.metrics.extra["partials"][row]
        prefixes = [source[: min(len(source), k * update_every)] for k in range(1, len(partials) + 1)]
        expected = [ids[:-1] if ids and ids[-1] == 0 else ids for ids in _offline(gen, prefixes)]
        assert partials == expected
        assert result.ids[row] == _offline(gen, [source])[0]


def test_passes_do_not_depend_on_the_output_length():
    """Two models whose outputs for the same sources differ in length: the same passes."""
    lengths, passes = set(), set()
    for seed in range(4):
        result = Generator(_model(seed=seed)).generate(source=SOURCES, max_new_tokens=12)
        lengths.add(tuple(len(ids) for ids in result.ids))
        passes.add(result.metrics.forward_passes["target"])
    assert len(lengths) > 1 and passes == {max(len(s) for s in SOURCES)}


def test_retranslation_replaces_while_appending_would_not():
    """Broken variant: keeping the previous partial and appending the new translation's extra tokens
    (a streaming, never-revising policy) differs from re-translation on a revised output."""
    b = _model()
    stream = Retranslator(b.model, b.ctx.build("decoder", "nat-ctc"), max_new_tokens=12, eos_id=0)
    outputs, appended = [], []
    for token in SOURCES[0]:
        out = stream.update([token])
        appended = appended + out[len(appended):] if appended else out
        outputs.append(out)
    assert stream.passes == len(SOURCES[0]) and outputs[-1] == stream.translation
    revised = [i for i in range(1, len(outputs)) if erasure(outputs[i - 1], outputs[i]) > 0]
    assert revised, "the random model never revised a partial: pick another seed"
    assert appended != outputs[-1]


def test_erasure_and_errors():
    assert erasure([1, 2, 3], [1, 2, 4, 5]) == 1 and erasure([], [1]) == 0 and erasure([1, 2], [1, 2, 3]) == 0
    with pytest.raises(Exception, match="source block"):
        Generator(_model()).generate(prompt_ids=[[1, 2]], max_new_tokens=3)
    with pytest.raises(Exception, match="ctc"):
        b = tiny_model(base={"data": {"name": "seq2seq", "source_length": S, "target_length": 7}, "tokenizer": {"name": "ids", "vocab_size": 6, "eos_id": 0},
                             "head": {"name": "lm"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, "objective": {"name": "next-token"},
                             "decoder": {"name": "fretna"}})
        Generator(b).generate(source=[[1, 2]], max_new_tokens=3)
