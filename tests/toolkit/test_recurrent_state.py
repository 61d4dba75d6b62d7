"""genloom.toolkit.recurrent.RecurrentState on a toy layer whose state is a running sum."""

from __future__ import annotations

import pytest
import torch

from genloom.toolkit.recurrent import RecurrentState


def replay(index, before, record, keep):
    return {"sum": before["sum"] + (record["x"] * keep).sum(1)}


def advance(state, x, valid=None):
    steps = state.begin(valid, x.shape[1])
    before = state.layers[0]["sum"]
    state.commit(0, {"sum": before + (x * steps).sum(1)}, {"x": x})


def test_rollback_replays_the_kept_steps_and_respects_padding():
    state = RecurrentState([{"sum": torch.zeros(2)}], replay, 2)
    advance(state, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    valid = torch.tensor([[True, True, True], [False, True, True]])
    advance(state, torch.tensor([[10.0, 20.0, 30.0], [99.0, 40.0, 50.0]]), valid)
    assert state.lengths.tolist() == [5, 4]
    assert state.layers[0]["sum"].tolist() == [63.0, 97.0]
    state.rollback(torch.tensor([3, 3]))  # row 1 keeps its first real step (40), not the pad
    assert state.layers[0]["sum"].tolist() == [13.0, 47.0]
    with pytest.raises(ValueError, match="most recent advance"):
        state.rollback(1)
    with pytest.raises(ValueError, match="roll forward"):
        state.rollback(4)


def test_reorder_snapshot_restore():
    state = RecurrentState([{"sum": torch.zeros(2)}], replay, 2)
    advance(state, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    snap = state.snapshot()
    advance(state, torch.tensor([[5.0], [6.0]]))
    state.reorder(torch.tensor([1, 1, 0]))
    assert state.layers[0]["sum"].tolist() == [13.0, 13.0, 8.0] and state.batch_size == 3
    state.rollback(torch.tensor([2, 3, 2]))
    assert state.layers[0]["sum"].tolist() == [7.0, 13.0, 3.0]
    state.restore(snap)
    assert state.layers[0]["sum"].tolist() == [3.0, 7.0] and state.lengths.tolist() == [2, 2]
