"""genloom.toolkit.anyorder: orders, their inverses and double positions; the insertion canvas."""

from __future__ import annotations

import itertools

import pytest
import torch

from genloom.toolkit.anyorder import (
    DoublePositionalEncoding,
    InsertionCanvas,
    double_positions,
    gap_counts,
    gap_tokens,
    identity_orders,
    inverse,
    is_permutation,
    permute,
    random_orders,
    revealed_before,
    unpermute,
)


def test_random_orders_are_permutations_that_keep_the_fixed_prefix():
    g = torch.Generator().manual_seed(0)
    orders = random_orders(64, 7, fixed=2, generator=g)
    assert is_permutation(orders)
    assert (orders[:, :2] == torch.tensor([0, 1])).all()
    # every position past the prefix is reached first at least once: the orders are not one fixed order
    assert set(orders[:, 2].tolist()) == set(range(2, 7))
    assert not is_permutation(torch.tensor([[0, 0, 2]]))
    with pytest.raises(ValueError, match="fixed"):
        random_orders(1, 3, fixed=4)


def test_permute_unpermute_and_inverse_round_trip():
    g = torch.Generator().manual_seed(1)
    order = random_orders(5, 6, generator=g)
    x = torch.randn(5, 6, 3, generator=g)
    layout = permute(x, order)
    assert torch.equal(layout[2, 4], x[2, order[2, 4]])
    assert torch.equal(unpermute(layout, order), x)
    inv = inverse(order)
    assert torch.equal(order.gather(1, inv), identity_orders(5, 6))
    assert torch.equal(inverse(inv), order)
    # a broken inverse (the order itself) does not undo a non-involutive permutation
    assert not torch.equal(permute(layout, order), x)


def test_double_positions_and_revealed_sets():
    order = torch.tensor([[0, 3, 1, 2]])
    current, nxt = double_positions(order)
    assert current.tolist() == [[0, 3, 1]] and nxt.tolist() == [[3, 1, 2]]
    seen = revealed_before(order)[0]
    assert seen[1].tolist() == [True, False, False, True]  # after step 1: positions 0 and 3
    assert seen[3].all()
    assert torch.equal(revealed_before(identity_orders(1, 4))[0], torch.ones(4, 4).tril().bool())


def test_double_encoding_with_the_identity_order_is_one_absolute_encoding():
    enc = DoublePositionalEncoding(8, 4)
    cur, nxt = double_positions(identity_orders(2, 6))
    out = enc(cur, nxt)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[0, 2], enc.current.weight[2] + enc.next.weight[3])
    with pytest.raises(ValueError, match="max_positions"):
        enc(torch.tensor([[8]]), torch.tensor([[0]]))


def test_parallel_insertions_refer_to_the_canvas_before_the_step():
    canvas = InsertionCanvas([[10, 20, 30], []])
    canvas.step([{0: [1], 2: [2, 3], 3: [4]}, {0: [7, 8]}])
    assert canvas.tokens == [[1, 10, 20, 2, 3, 30, 4], [7, 8]]
    assert canvas.steps == 1
    ids, valid = canvas.to_tensor(pad_id=0)
    assert ids.tolist() == [[1, 10, 20, 2, 3, 30, 4], [7, 8, 0, 0, 0, 0, 0]] and int(valid.sum()) == 9
    with pytest.raises(ValueError, match="out of range"):
        canvas.insert(1, {5: [1]})


def test_locked_slots_keep_a_span_contiguous_and_move_with_insertions():
    canvas = InsertionCanvas([[5, 6, 7]])
    canvas.lock_inside(0, 1, 3)  # tokens 6, 7 form a span: slot 2 is locked
    assert canvas.open_slots(0) == [0, 1, 3]
    with pytest.raises(ValueError, match="locked"):
        canvas.insert(0, {2: [9]})
    canvas.insert(0, {0: [1, 2], 1: [3]})
    assert canvas.tokens[0] == [1, 2, 5, 3, 6, 7]
    assert canvas.locked[0] == {5}  # still between 6 and 7
    canvas.insert(0, {6: [4]})
    assert canvas.tokens[0] == [1, 2, 5, 3, 6, 7, 4]


def test_gap_targets_count_the_missing_tokens_of_each_slot():
    seq = [11, 12, 13, 14, 15]
    for keep in itertools.product([False, True], repeat=5):
        keep_t = torch.tensor(keep)
        gaps = gap_tokens(seq, keep)
        counts = gap_counts(keep_t)
        assert [len(g) for g in gaps] == counts.tolist()
        assert int(counts.sum()) == 5 - sum(keep)
        # reinserting every gap's tokens in one parallel step rebuilds the sequence
        canvas = InsertionCanvas([[t for t, k in zip(seq, keep) if k]])
        canvas.step([{s: g for s, g in enumerate(gaps) if g}])
        assert canvas.tokens[0] == seq


def _lm(seed=0):
    from genloom.testing import tiny_model

    base = {"tokenizer": {"name": "ids", "vocab_size": 7, "eos_id": 0}, "head": {"name": "lm"},
            "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}}
    return tiny_model(base=base, seed=seed).model.double().eval()


def test_slot_states_read_slot_k_at_prefix_end_plus_k_and_ignore_padding():
    from genloom.core.pattern import FULL
    from genloom.toolkit.anyorder import slot_states

    model = _lm()
    prefix = torch.tensor([[3, 4], [5, 6]])
    canvases = [[1, 2, 3], [4]]
    slots = slot_states(model, prefix, canvases, pad_id=0)
    assert slots.shape[:2] == (2, 4)  # longest canvas + 1 slots
    for b, c in enumerate(canvases):  # each row alone, no padding: the same states at its slots
        ids = torch.tensor([prefix[b].tolist() + c])
        h = model.backbone(model.head.embed(ids), pattern=FULL)
        torch.testing.assert_close(slots[b, : len(c) + 1], h[0, 1:], rtol=0, atol=1e-12)
    other = slot_states(model, prefix, [[1, 2, 3], [4]], pad_id=5)  # another padding id: same valid slots
    torch.testing.assert_close(other[1, :2], slots[1, :2], rtol=0, atol=1e-12)


def test_finished_canvases_end_with_eos_and_count_it():
    canvas = InsertionCanvas([[4, 5], []])
    commit = canvas.finished(eos_id=0)
    assert commit.tokens.tolist() == [[4, 5, 0], [0, 0, 0]] and commit.counts.tolist() == [3, 1]
