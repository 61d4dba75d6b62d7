"""EdiT5: gold edits realize every target exactly, the pointer always decodes to a permutation of
the kept tokens, decoding is one NAR pass plus exactly (#inserted + separators) insertion steps,
and the mechanism trains on sentence fusion."""

from __future__ import annotations

import random

import pytest
import torch

from genloom.core.data import source_block
from genloom.core.errors import ConfigError
from genloom.core.generation import Generator
from genloom.plugins.edit5 import EditFusionConfig
from genloom.plugins.edit5.data import EditFusionData
from genloom.plugins.edit5.labels import Edits, derive_edits, insertion_sequence, insertion_steps, parse_insertions, realize
from genloom.plugins.edit5.pointer import greedy_order
from genloom.testing import check_objective, tiny_model, train_briefly

S, T, EOS = 24, 24, 256


class _Bytes:
    """The byte tokenizer's encoding (ids 0..255, end-of-sequence 256), without the plugin."""

    eos_id = EOS

    def encode(self, text):
        return list(text.encode())


def _fusion_pairs():
    data = EditFusionData(EditFusionConfig(eval_size=3000))  # every distinct pair
    return [p for split in ("train", "val", "test") for p in data.load(split, _Bytes(), None).pairs]


def _random_pairs(n=400, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        vocab = rng.randint(2, 6)
        source = [rng.randrange(vocab) for _ in range(rng.randint(0, 12))]
        target = [rng.randrange(vocab + 2) for _ in range(rng.randint(0, 12))]  # ids the source lacks too
        if rng.random() < 0.5 and source:  # an editing-like target: a shuffled, trimmed source with insertions
            target = rng.sample(source, rng.randint(0, len(source))) + target[: rng.randint(0, 3)]
        out.append((source, target))
    return out


def _realized(source, edits: Edits):
    return realize(source, edits.keep, edits.order, edits.insertions)


def test_gold_edits_realize_every_pair_exactly_and_broken_pointers_do_not():
    fusion = [(source_block(s, S, EOS), t) for s, t in _fusion_pairs()]
    assert len(fusion) == 2700
    pairs = fusion + _random_pairs()
    moved = 0
    for min_span, some in ((1, pairs), (2, pairs), (3, _random_pairs())):
        for source, target in some:
            e = derive_edits(source, target, min_span)
            assert _realized(source, e) == target
            seq = insertion_sequence(e, 1000, -1)
            assert parse_insertions(seq, 1000, len(source) + 1, -1) == e.insertions
            assert len(seq) == insertion_steps(e)
            moved += list(e.order) != sorted(e.order)
    assert moved > 0  # the data needs re-ordering, not only keep/delete
    # broken variants: the pointer order off by one (rotated), or the insertions one slot late
    rotated = wrong_slot = 0
    for source, target in fusion:
        e = derive_edits(source, target, 2)
        if len(e.order) > 1:
            rot = e.order[1:] + e.order[:1]
            rotated += realize(source, e.keep, rot, e.insertions) != target
        slots = [0] + [p + 1 for p in e.order]
        late = {slots[(slots.index(k) + 1) % len(slots)]: v for k, v in e.insertions.items()}
        wrong_slot += realize(source, e.keep, e.order, late) != target
    assert rotated == len(fusion) and wrong_slot == len(fusion)


def test_fusion_needs_fewer_insertion_steps_than_output_tokens():
    for s, t in _fusion_pairs():
        e = derive_edits(source_block(s, S, EOS), t, 2)
        assert insertion_steps(e) < len(t) + 1  # the AR decoder's steps vs the output with its end


def test_realize_rejects_an_order_that_is_not_a_permutation_of_the_kept_tokens():
    with pytest.raises(ValueError, match="permutation"):
        realize([1, 2, 3], [True, True, False], [0, 0], {})
    with pytest.raises(ValueError, match="follow no kept token"):
        realize([1, 2, 3], [True, False, False], [0], {2: (5,)})


def test_pointer_decoding_is_always_a_permutation_of_the_kept_tokens():
    g = torch.Generator().manual_seed(0)
    naive_fails = 0
    for trial in range(300):
        n = 1 + trial % 10
        scores = torch.randn(n + 1, n, generator=g)
        keep = (torch.rand(n, generator=g) < 0.7).tolist()
        kept = [p for p, k in enumerate(keep) if k]
        assert sorted(greedy_order(scores, keep)) == kept
        # broken variant: following each row's argmax without the used-once constraint
        row, naive = 0, []
        for _ in kept:
            best = kept[int(scores[row, kept].argmax())]
            naive.append(best)
            row = best + 1
        naive_fails += sorted(naive) != kept
    assert naive_fails > 0


def _tiny(d_model=16, n_layers=1, data=True):
    base = {
        "data": {"name": "edit-fusion", "batch_size": 64},
        "tokenizer": {"name": "bytes"},
        "head": {"name": "edit5", "d_pointer": 16},
        "backbone": {"name": "transformer", "d_model": d_model, "n_layers": n_layers, "n_heads": 2},
        "objective": {"name": "edit5"},
        "decoder": {"name": "edit5"},
    }
    return tiny_model(base=base, seed=0, data=data)


def test_special_tokens_and_objective_gradients():
    b = _tiny()
    assert b.ctx.edit5_slot_0_id == 257 and b.ctx.edit5_start_id == 257 + S + 1 and b.ctx.vocab_size == 257 + S + 2
    train = b.data.load("train", b.model.tokenizer, b.ctx)
    batch = torch.utils.data.default_collate([train[i] for i in range(6)])
    out = check_objective(b, batch)
    assert {"tag_loss", "pointer_loss", "insertion_loss"} <= set(out)


class _Oracle:
    """Replaces the three output layers by the gold edit of one pair; counts backbone calls."""

    def __init__(self, built, source, target, monkeypatch):
        head = built.model.head
        self.edits = derive_edits(source, target, 2)
        self.sequence = insertion_sequence(self.edits, head.slot_id, EOS)
        self.calls, self.step = 0, 0
        backbone, forward = built.model.backbone, built.model.backbone.forward

        def counted(*args, **kwargs):
            self.calls += 1
            return forward(*args, **kwargs)

        def tags(h_src):
            return torch.stack([~torch.tensor(self.edits.keep), torch.tensor(self.edits.keep)], -1).to(h_src.dtype)[None] * 10.0

        def pointer(h_src):
            scores = torch.zeros(1, S + 1, S, dtype=h_src.dtype)
            for a, c in self.edits.successors().items():
                scores[0, a + 1, c] = 10.0
            return scores

        def insertion(h_dec, h_src):
            logits = torch.zeros(1, h_dec.shape[1], head.vocab_size, dtype=h_dec.dtype)
            logits[0, -1, self.sequence[self.step]] = 10.0
            self.step += 1
            return logits

        monkeypatch.setattr(backbone, "forward", counted)
        monkeypatch.setattr(head, "tag_logits", tags)
        monkeypatch.setattr(head, "pointer_scores", pointer)
        monkeypatch.setattr(head, "insertion_logits", insertion)


def test_decoding_is_one_nar_pass_and_exactly_the_insertion_steps(monkeypatch):
    """With the gold edit as the heads' outputs, the decoder realizes the target exactly, running
    the backbone once over the source and once per insertion-sequence token (#inserted + markers +
    end), fewer times than the output has tokens."""
    b = _tiny(data=True)
    b.model.eval()
    test = b.data.load("test", b.model.tokenizer, b.ctx).pairs
    for source, target in test[:6]:
        with monkeypatch.context() as m:
            oracle = _Oracle(b, source_block(source, S, EOS), target, m)
            r = Generator(b).generate(source=[source], max_new_tokens=T, seed=0)
        steps = insertion_steps(oracle.edits)
        assert list(r.ids[0]) == target + [EOS]
        assert r.metrics.forward_passes == {"tag-point": 1, "insertion": steps}
        assert oracle.calls == 1 + steps
        assert r.metrics.extra["insertion_steps"] == [steps]
        assert steps == r.metrics.extra["inserted_tokens"][0] + r.metrics.extra["insertion_markers"][0] + 1
        assert steps < len(target) + 1


def test_cached_insertion_steps_equal_the_training_pass():
    """The decoder's NAR pass + cached one-token steps compute exactly the tag, pointer and
    insertion scores of the objective's single teacher-forced pass (float64)."""
    from genloom.plugins.edit5.head import hidden

    b = _tiny()
    b.model.double().eval()
    head = b.model.head
    source, target = b.data.load("test", b.model.tokenizer, b.ctx).pairs[0]
    block = torch.tensor([source_block(source, S, EOS)])
    seq = insertion_sequence(derive_edits(block[0].tolist(), target, 2), head.slot_id, EOS)
    dec_in = torch.tensor([[head.start_id] + seq[:-1]])
    with torch.no_grad():
        h = hidden(b.model, torch.cat([block, dec_in], 1))
        full = head.insertion_logits(h[:, S:], h[:, :S])
        state = b.model.init_state(1, S + len(seq) + 1)
        h_src = hidden(b.model, block, state=state)
        steps = torch.cat([head.insertion_logits(hidden(b.model, dec_in[:, i : i + 1], state=state), h_src) for i in range(len(seq))], 1)
        assert torch.allclose(h_src, h[:, :S], atol=1e-10)
        assert torch.allclose(head.pointer_scores(h_src), head.pointer_scores(h[:, :S]), atol=1e-10)
        assert torch.allclose(steps, full, atol=1e-10)
        # broken variant: steps that do not continue the source's state lose the conditioning
        alone = torch.cat([head.insertion_logits(hidden(b.model, dec_in[:, : i + 1])[:, -1:], h_src) for i in range(len(seq))], 1)
        assert not torch.allclose(alone, full, atol=1e-4)


def test_the_insertion_loop_parses_under_any_weights():
    """An untrained model: the constrained loop still yields a valid edit for every source."""
    b = _tiny()
    b.model.eval()
    test = b.data.load("test", b.model.tokenizer, b.ctx).pairs
    r = Generator(b).generate(source=[s for s, _ in test[:8]], max_new_tokens=T, seed=0)
    assert r.metrics.forward_passes["tag-point"] == 1
    assert r.metrics.forward_passes["insertion"] == max(r.metrics.extra["insertion_steps"])
    steps, ins, marks = (r.metrics.extra[k] for k in ("insertion_steps", "inserted_tokens", "insertion_markers"))
    finished = [s == i + m + 1 for s, i, m in zip(steps, ins, marks)]
    assert sum(finished) == len(steps) - r.metrics.extra["insertion_unfinished"]


def test_the_head_needs_source_conditioned_data():
    base = {"tokenizer": {"name": "bytes"}, "head": {"name": "edit5"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}}
    with pytest.raises(ConfigError, match="source-conditioned"):
        tiny_model(base=base, seed=0)


@pytest.mark.slow
def test_a_short_training_edits_held_out_pairs():
    b = train_briefly(_tiny(d_model=64, n_layers=2), 100)
    test = b.data.load("test", b.model.tokenizer, b.ctx).pairs[:100]
    r = Generator(b).generate(source=[s for s, _ in test], max_new_tokens=T, seed=0)
    exact = sum(list(x) == t + [EOS] for x, (_, t) in zip(r.ids, test)) / len(test)
    assert exact >= 0.5
    steps, outputs = r.metrics.extra["insertion_steps"], [len(t) + 1 for _, t in test]
    assert sum(steps) < sum(outputs) / 2
