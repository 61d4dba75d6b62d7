"""ADED: tri-gram drafts learned online from the target's outputs, verified as a token tree.

Properties: greedy output equals the target's greedy decoding token for token; the table grows
after every step and the accepted length grows on a repetitive stream (a small random transformer's
greedy continuation falls into a cycle); a frozen table (the broken variant: no online update)
does not learn it.
"""

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.aded.trigram import TrigramTable
from genloom.testing import check_decoder, tiny_model

VOCAB = 16
PROMPTS = [[1, 2, 3, 4, 5], [2, 7], [5, 0, 1]]
CONFIG = {
    "tokenizer": {"name": "ids", "vocab_size": VOCAB},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 2},
    "objective": {"name": "next-token"},
}


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    built = tiny_model(base=CONFIG)
    built.model.eval()
    return built


def _quarters(lengths):
    n = max(len(lengths) // 4, 1)
    return sum(lengths[:n]) / n, sum(lengths[-n:]) / n


def test_greedy_parity_and_acceptance_grows_online(target):
    reference = run(target.model, PROMPTS, target.ctx.build("decoder", "greedy"), max_new_tokens=64)
    dec = target.ctx.build("decoder", {"name": "aded"})
    out = run(target.model, PROMPTS, dec, max_new_tokens=64)
    assert out.ids == reference.ids
    m = out.metrics
    assert m.forward_passes["target"] < 64 / 2  # one target pass per tree, several tokens each
    first, last = _quarters(m.acceptance_lengths)
    assert last > first + 1.0  # the table learned the stream while decoding
    # every committed token is counted, but for the last round's (the loop ends before advancing)
    counted = dec.table.updates - sum(len(p) for p in PROMPTS)
    assert sum(len(g) for g in out.ids) - len(PROMPTS) * (len(dec.shape.branching) + 1) <= counted < sum(len(g) for g in out.ids)


def test_broken_variant_a_frozen_table_does_not_adapt(target, monkeypatch):
    dec = target.ctx.build("decoder", {"name": "aded"})
    out = run(target.model, PROMPTS, dec, max_new_tokens=64)
    learned = out.metrics.mean_acceptance_length
    frozen = target.ctx.build("decoder", {"name": "aded"})
    original = TrigramTable.update
    monkeypatch.setattr(TrigramTable, "update", lambda self, tokens, start=0: original(self, tokens, start) if start == 0 else None)  # prompt only
    stuck = run(target.model, PROMPTS, frozen, max_new_tokens=64)
    assert stuck.ids == out.ids  # still lossless: any draft is verified
    assert stuck.metrics.mean_acceptance_length < learned / 2


def test_table_persists_across_calls_and_exploration(target):
    dec = target.ctx.build("decoder", {"name": "aded"})
    cold = run(target.model, PROMPTS, dec, max_new_tokens=32)
    warm = run(target.model, PROMPTS, dec, max_new_tokens=32)
    assert warm.ids == cold.ids
    assert warm.metrics.mean_acceptance_length > cold.metrics.mean_acceptance_length
    table = TrigramTable(exploration=1.0)
    table.update([1, 2, 3, 1, 2, 3, 1, 2, 4])
    assert table.children(1, 2, 1) == [3]  # exploit: 3 followed (1, 2) twice, 4 once
    for _ in range(3):
        table.children(1, 2, 1)
    assert table.children(1, 2, 1) == [4]  # explore: 3 was drafted 4 times, 4 never
    assert table.children(9, 9, 2) == [1, 2]  # unseen context: unigram back-off, frequent first


def test_conformance_and_config_errors(target):
    check_decoder(target, {"name": "aded"})
    from genloom.core.errors import ConfigError

    with pytest.raises(ConfigError, match="branching"):
        target.ctx.build("decoder", {"name": "aded", "branching": [0]})
    with pytest.raises(ConfigError, match="exploration"):
        target.ctx.build("decoder", {"name": "aded", "exploration": -1.0})
