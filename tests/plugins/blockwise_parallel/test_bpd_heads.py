"""The proposal heads and their objective: head 1 is the base head, head i is scored on the token i ahead."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import bpd_toy
from genloom.testing import check_head, check_objective


def test_head_one_is_the_base_head_and_new_heads_start_as_copies_of_it():
    torch.manual_seed(0)
    built = bpd_toy.build(bpd_toy.model_config(block_size=3))
    model = built.model
    head = model.head
    ids = torch.randint(0, 256, (2, 7))
    h = model.hidden(ids)
    heads = head.proposal_logits(h)
    assert heads.shape == (2, 7, 3, built.ctx.vocab_size)
    assert torch.equal(heads[:, :, 0], model(ids))  # forward() is the base head's next-token logits
    assert torch.equal(heads[:, :, 0], head.base(h))
    torch.testing.assert_close(heads[:, :, 1], heads[:, :, 0])  # zero-initialised output layers
    with torch.no_grad():
        for layer in head.proposal_layers:
            layer.down.weight.normal_()
    heads = head.proposal_logits(h)
    assert not torch.allclose(heads[:, :, 1], heads[:, :, 0])
    assert head.proposal_logits(h, 2).shape[-2] == 2


def test_objective_scores_head_i_on_the_token_i_ahead_with_the_mask():
    torch.manual_seed(0)
    built = bpd_toy.build(bpd_toy.model_config(block_size=3, freeze_base=False))
    model = built.model
    with torch.no_grad():
        for layer in model.head.proposal_layers:
            layer.down.weight.normal_(0, 0.1)
    ids = torch.randint(0, 256, (2, 9))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False  # e.g. padding at the end of the second row
    out = model.loss({"ids": ids, "mask": mask})
    logits = model.head.proposal_logits(model.hidden(ids[:, :-1]))
    expected = []
    for i in range(3):
        ce = []
        for b in range(2):
            for t in range(8 - i):
                if mask[b, t + i]:
                    ce.append(F.cross_entropy(logits[b, t, i][None], ids[b, t + 1 + i][None]))
        expected.append(torch.stack(ce).mean())
        torch.testing.assert_close(out[f"ce_head{i + 1}"], expected[i].detach())
    torch.testing.assert_close(out["loss"], torch.stack(expected).mean())  # joint: base_weight 1
    frozen = bpd_toy.build(bpd_toy.model_config(block_size=3))
    frozen.model.load_state_dict(model.state_dict())
    out = frozen.model.loss({"ids": ids, "mask": mask})
    torch.testing.assert_close(out["loss"], (expected[1] + expected[2]).detach() / 2)  # frozen: heads 2..k only


@pytest.mark.parametrize("freeze_base", [True, False])
def test_frozen_training_leaves_the_base_model_exactly_unchanged(freeze_base):
    torch.manual_seed(0)
    built = bpd_toy.build(bpd_toy.model_config(block_size=3, freeze_base=freeze_base))
    model = built.model
    base = {k: v.clone() for k, v in model.state_dict().items() if "proposal_layers" not in k}
    heads = {k: v.clone() for k, v in model.state_dict().items() if "proposal_layers" in k}
    bpd_toy.train(model, bpd_toy.periodic(), 3, lambda m, b: m.loss(b), batch_size=4, seq_len=16)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items()) == freeze_base
    assert not all(torch.equal(after[k], v) for k, v in heads.items())


def test_conformance_kit():
    check_head({"name": "blockwise-parallel", "block_size": 3})
    for freeze_base in (True, False):
        built = bpd_toy.build(bpd_toy.model_config(d_model=16, n_layers=1, block_size=3, freeze_base=freeze_base))
        check_objective(built, {"ids": torch.randint(0, 256, (2, 10))})
