"""ENCONTER: the balanced-binary-tree oracle finishes a length-n target in ceil(log2(n+1)) parallel
insertion passes plus one; decoding driven by the oracle rebuilds the target in exactly that many
passes; decoding from entity constraints keeps every span contiguous and in order."""

from __future__ import annotations

import math

import pytest
import torch

from genloom.core.data import SourceTargetPairs
from genloom.core.generation import Generator
from genloom.plugins.enconter import decoder as decoder_mod
from genloom.plugins.enconter.objective import entity_spans, locked_slots
from genloom.plugins.enconter.oracle import middle, oracle_states, passes_to_finish, slot_ranges
from genloom.testing import check_objective, tiny_model
from genloom.toolkit import anyorder

V = 8
S = 3


def _model(decoder=None):
    base = {
        "data": {"name": "seq2seq", "source_length": S, "target_length": 12},
        "tokenizer": {"name": "ids", "vocab_size": V, "eos_id": 0},
        "head": {"name": "enconter"},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "enconter"},
        "decoder": decoder or {"name": "enconter"},
    }
    b = tiny_model(base=base, seed=0)
    b.model.double().eval()
    return b


def test_the_balanced_oracle_finishes_in_a_logarithmic_number_of_passes():
    for n in range(1, 65):
        steps = len(oracle_states([], n)) - 1
        assert steps == math.ceil(math.log2(n + 1)) and passes_to_finish(n) == steps + 1
        # the technique list's ceil(log2 n) + 1: the same except at powers of two, where one more pass ends
        assert passes_to_finish(n) == math.ceil(math.log2(n)) + 1 + (n & (n - 1) == 0)
    # a broken variant: inserting the first missing token of each slot (left to right) takes n steps
    kept, steps = [], 0
    while len(kept) < 16:
        kept = sorted(kept + [lo for lo, hi in slot_ranges(kept, 16) if hi > lo])
        steps += 1
    assert steps == 16 > len(oracle_states([], 16)) - 1


def _oracle_logits(target):
    """A stand-in for slot_log_probs that puts all mass on the oracle's choice in every slot."""
    def slot_log_probs(model, prefix, canvases, locked, pad_id):
        G = max(len(c) for c in canvases) + 1
        out = torch.full((len(canvases), G, V + 1), float("-inf"), dtype=torch.float64)
        for b, c in enumerate(canvases):
            kept, j = [], 0
            for i, t in enumerate(target[b]):  # the canvas is a subsequence of the target
                if j < len(c) and c[j] == t:
                    kept.append(i)
                    j += 1
            for k, (lo, hi) in enumerate(slot_ranges(kept, len(target[b]))):
                m = middle(lo, hi)
                out[b, k, V if m is None or k in locked[b] else target[b][m]] = 0.0
            out[b, len(c) + 1 :, V] = 0.0
        return out
    return slot_log_probs


def test_oracle_driven_decoding_rebuilds_the_target_in_the_counted_passes(monkeypatch):
    targets = [[1, 2, 3, 4, 5, 6, 7], [3], [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4]]
    monkeypatch.setattr(decoder_mod, "slot_log_probs", _oracle_logits(targets))
    b = _model()
    result = Generator(b).generate(source=[[1, 2]] * 3, max_new_tokens=12)
    assert [r[:-1] for r in result.ids] == targets
    assert result.metrics.forward_passes == {"target": passes_to_finish(11)}  # the longest row sets the rounds
    for t in targets:
        monkeypatch.setattr(decoder_mod, "slot_log_probs", _oracle_logits([t]))
        one = Generator(b).generate(source=[[1, 2]], max_new_tokens=12)
        assert one.metrics.forward_passes == {"target": passes_to_finish(len(t))}
    # from entity constraints (spans separated by the end-of-sequence id) there is less to insert
    t = targets[0]
    monkeypatch.setattr(decoder_mod, "slot_log_probs", _oracle_logits([t]))
    one = Generator(b).generate(source=[[1, 2]], prompt_ids=[[2, 3, 0, 6]], max_new_tokens=12)
    assert one.ids[0][:-1] == t and one.metrics.forward_passes["target"] < passes_to_finish(len(t))


def _contiguous_in_order(body, spans):
    start = 0
    for span in spans:
        for i in range(start, len(body) - len(span) + 1):
            if body[i : i + len(span)] == span:
                start = i + len(span)
                break
        else:
            return False
    return True


def test_entity_spans_stay_contiguous_and_in_order():
    b = _model(decoder={"name": "enconter", "greedy": False})
    spans = [[5, 6, 7], [3, 4]]
    prompt = [1, 2, 3, 5, 6, 7, 0, 3, 4]  # source block [1, 2, 3], then the two spans
    result = Generator(b).generate(prompt_ids=[prompt] * 16, max_new_tokens=12, seed=0)
    bodies = [[t for t in r if t != 0] for r in result.ids]
    assert all(_contiguous_in_order(body, spans) for body in bodies)
    assert any(len(body) > 5 for body in bodies)  # something was inserted


def test_without_span_locks_entities_get_split(monkeypatch):
    """Broken variant: entity-span-aware inference off (no slot locked)."""
    monkeypatch.setattr(anyorder.InsertionCanvas, "lock_inside", lambda self, b, start, end: None)
    b = _model(decoder={"name": "enconter", "greedy": False})
    prompt = [1, 2, 3, 5, 6, 7, 0, 3, 4]
    result = Generator(b).generate(prompt_ids=[prompt] * 16, max_new_tokens=12, seed=0)
    assert not all(_contiguous_in_order([t for t in r if t != 0], [[5, 6, 7], [3, 4]]) for r in result.ids)


def test_objective_labels_and_contract():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        spans = entity_spans(9, 2, 3, generator=g)
        assert all(e - s <= 3 for s, e in spans) and all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    assert locked_slots([0, 1, 2, 5], [(0, 3)]) == {1, 2}
    b = _model()
    pairs = SourceTargetPairs([([1, 2], [3, 4, 5, 6]), ([4], [7])], S, 12, pad_id=0, eos_id=0)
    batch = torch.utils.data.default_collate([pairs[i] for i in range(2)])
    b.model.train()
    check_objective(b, batch)
    with pytest.raises(Exception, match="prefix"):
        Generator(_model()).generate(prompt_ids=[[1, 2]], max_new_tokens=3)
