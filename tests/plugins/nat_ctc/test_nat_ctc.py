"""NAT-CTC: the model's CTC loss is the log-sum over every alignment, decoding is one forward pass
plus collapse, the outputs never read the target, and the mechanism trains on the reverse task."""

from __future__ import annotations

import itertools

import pytest
import torch

from genloom.core.generation import Generator
from genloom.plugins.nat_ctc.head import parallel_logits
from genloom.plugins.nat_ctc.objective import split_batch
from genloom.testing import check_objective, tiny_model, train_briefly
from genloom.toolkit.ctc import collapse, ctc_nll_by_enumeration

S = 2


def _tiny(vocab=3, source_length=S, target_length=3, ratio=2):
    """An ids tokenizer over ``vocab`` ids (eos = 0), a blank reserved after them."""
    base = {
        "data": {"name": "seq2seq", "source_length": source_length, "target_length": target_length},
        "tokenizer": {"name": "ids", "vocab_size": vocab, "eos_id": 0},
        "head": {"name": "ctc", "upsample_ratio": ratio},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
        "objective": {"name": "nat-ctc"},
        "decoder": {"name": "nat-ctc"},
    }
    b = tiny_model(base=base, seed=0)
    b.model.double().eval()
    return b


def _batch(pairs, source_length=S, target_length=3, pad=0):
    from genloom.core.data import SourceTargetPairs

    data = SourceTargetPairs(pairs, source_length, target_length, pad_id=pad, eos_id=pad)
    return torch.utils.data.default_collate([data[i] for i in range(len(data))])


def test_blank_is_reserved_and_the_output_is_upsampled():
    b = _tiny()
    assert b.ctx.blank_id == 3 and b.ctx.vocab_size == 4
    logits = parallel_logits(b.model, torch.tensor([[1, 2]]))
    assert logits.shape == (1, 2 * S, 4)


def test_the_models_ctc_loss_equals_the_log_sum_over_all_alignments():
    """Vocabulary {0, 1, 2} + blank, 4 output positions: all 4^4 alignments enumerated (1e-6)."""
    b = _tiny()
    pairs = [([1, 2], [2, 1]), ([2], [1, 1]), ([1, 1], [2])]
    batch = _batch(pairs)
    source, targets, lengths = split_batch(batch, S)
    with torch.no_grad():
        logits = parallel_logits(b.model, source)
        nll = b.model.head.ctc_nll(logits, targets, lengths)
    log_probs = logits.log_softmax(-1)
    for i, (_, tgt) in enumerate(pairs):
        expected = ctc_nll_by_enumeration(log_probs[i], tgt, blank=3)
        assert abs(float(nll[i]) - float(expected)) < 1e-6
    loss = b.model.loss(batch)["loss"]
    assert abs(float(loss) - float(nll.sum() / lengths.sum())) < 1e-6
    # a broken variant: the end-of-sequence id counted as part of the target changes the law
    wrong = b.model.head.ctc_nll(logits, targets, lengths + 1)
    assert (wrong - nll).abs().min() > 1e-3


def test_outputs_never_read_the_target():
    """Non-autoregressive: the logits are a function of the source only; the loss of the target."""
    b = _tiny()
    one, other = _batch([([1, 2], [2, 1])]), _batch([([1, 2], [1, 1])])
    s1, _, _ = split_batch(one, S)
    s2, _, _ = split_batch(other, S)
    assert torch.equal(s1, s2)
    assert float(b.model.loss(one)["loss"]) != float(b.model.loss(other)["loss"])


def test_decoding_is_one_forward_pass_and_the_collapsed_best_path():
    b = _tiny(vocab=6, source_length=3, target_length=4)
    gen = Generator(b)
    sources = [[1, 2, 3], [4], []]
    result = gen.generate(source=sources, max_new_tokens=10)
    assert result.metrics.forward_passes == {"target": 1}
    from genloom.core.data import source_block

    blocks = torch.tensor([source_block(s, 3, 0) for s in sources])
    best = parallel_logits(b.model, blocks).argmax(-1)
    for i in range(3):
        expected = collapse(best[i], blank=b.ctx.blank_id)
        if 0 in expected:  # the end-of-sequence id ends the output where the path has one
            expected = expected[: expected.index(0)]
        assert result.ids[i] == expected + [0]
    # a broken variant: keeping repeated ids (no merge) differs from the collapse on some path
    paths = [list(p) for p in itertools.product(range(3), repeat=4)]
    assert any(collapse(p, 0) != [t for t in p if t != 0] for p in paths)


def test_objective_contract_and_bad_configs():
    b = _tiny()
    check_objective(b, _batch([([1, 2], [2, 1]), ([1], [2])]))
    with pytest.raises(Exception, match="source-conditioned"):
        tiny_model(base={"tokenizer": {"name": "bytes"}, "head": {"name": "ctc"}, "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, "objective": {"name": "nat-ctc"}})
    with pytest.raises(Exception, match="upsample_ratio"):
        tiny_model(base={"tokenizer": {"name": "bytes"}, "head": {"name": "ctc", "upsample_ratio": 0}, "backbone": {"name": "transformer"}})


@pytest.mark.slow
def test_trains_on_the_reverse_task_to_high_exact_match():
    """Reverse strings of 3-8 letters; held-out test split exact match of the one-pass decode."""
    base = {
        "data": {"name": "seq2seq", "task": "reverse", "source_length": 8, "target_length": 9, "max_length": 8, "train_size": 20000, "eval_size": 200},
        "tokenizer": {"name": "bytes"},
        "head": {"name": "ctc", "upsample_ratio": 2},
        "backbone": {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4},
        "objective": {"name": "nat-ctc"},
    }
    b = train_briefly(tiny_model(base=base, data=True, seed=0), 1000, lr=3e-3)
    model = b.model
    test = b.data.load("test", model.tokenizer, b.ctx)
    with torch.no_grad():
        exact = float(model.loss(torch.utils.data.default_collate([test[i] for i in range(len(test))]))["exact_match"])
    assert exact >= 0.5  # measured 0.655 (docs/catalogue/nat-ctc.md)
