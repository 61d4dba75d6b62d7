"""ARDT: a decision tree over a window of previous tokens, fitted on automaton chain-of-thought
traces, reproduces the automaton's state sequence exactly on held-out inputs under greedy rollout
through the core's decoding loop; a window too short to see the input symbol cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core.generation import run
from genloom.plugins.ardt import ARDTConfig, automata
from genloom.testing import check_decoder, tiny_model
from genloom.toolkit.recurrent import greedy_matches_recomputation

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "ardt.yaml"


def model_for(automaton="parity", n=8, **backbone):
    vocab = automata.vocabulary_size(automaton)
    base = {
        "tokenizer": {"name": "ids", "vocab_size": vocab},
        "head": {"name": "ardt-onehot"},
        "backbone": {"name": "ardt", "automaton": automaton, "input_length": n, "train_strings": 150, **backbone},
        "objective": {"name": "next-token"},
    }
    return tiny_model(base=base)


def rollout_accuracy(built, automaton, n, count=25):
    held_out = automata.random_inputs(automaton, n, count, seed=123, exclude=built.model.backbone.train_inputs)
    assert held_out, "no held-out strings left"
    prompts = [x + [automata.separator(automaton)] for x in held_out]
    decoder = built.ctx.build("decoder", {"name": "greedy"})
    result = run(built.model, prompts, decoder, max_new_tokens=n, seed=0)
    exact = [generated == automata.states(automaton, x) for generated, x in zip(result.ids, held_out)]
    return sum(exact) / len(exact)


@pytest.mark.parametrize("automaton", ["parity", "mod3", "ab-star"])
def test_greedy_rollout_reproduces_the_automaton_on_held_out_inputs(automaton):
    built = model_for(automaton)
    assert rollout_accuracy(built, automaton, 8) == 1.0


def test_a_window_that_cannot_see_the_input_symbol_fails():
    """Broken variant: q_i needs x_i, n + 1 tokens back; a window of n tokens misses it."""
    built = model_for("parity", window=8)
    assert rollout_accuracy(built, "parity", 8) < 0.5


def test_full_forward_equals_incremental_with_rollback_and_snapshot():
    built = model_for("mod3")
    model = built.model
    ids = torch.tensor([automata.trace("mod3", [0, 1, 2, 2, 1, 0, 0, 1]), automata.trace("mod3", [2, 2, 2, 1, 0, 1, 1, 2])])
    with torch.no_grad():
        full = model(ids)
        state = model.init_state(2)
        steps = torch.cat([model(ids[:, t : t + 1], state=state) for t in range(ids.shape[1])], 1)
        assert torch.equal(steps, full) and state.lengths.tolist() == [17, 17]
        state = model.init_state(2)
        model(ids[:, :9], state=state)
        snap = state.snapshot()
        model(torch.flip(ids[:, 9:14], [0]), state=state)  # wrong continuations, then roll back
        state.rollback(torch.tensor([9, 11]))
        assert state.layers[0]["window"][1].tolist()[-2:] == torch.flip(ids[:, 9:14], [0])[1, :2].tolist()
        state.reorder(torch.tensor([0]))  # row 0 kept none of the wrong tokens: continue it alone
        assert torch.equal(model(ids[:1, 9:], state=state), full[:1, 9:])
        state.restore(snap)
        assert torch.equal(model(ids[:, 9:], state=state), full[:, 9:])
        valid = torch.ones_like(ids, dtype=torch.bool)
        padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], 1)
        valid = torch.cat([torch.zeros(2, 3, dtype=torch.bool), valid], 1)
        assert torch.equal(model(padded, valid=valid)[:, 3:], full)


def test_decoding_loop_matches_recomputation_and_decoders_run():
    built = tiny_model(CONFIG)
    greedy_matches_recomputation(built, [[0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 2], [1, 1, 0, 2]], max_new_tokens=6)
    check_decoder(built, {"name": "beam", "num_beams": 2}, prompts=((0, 1, 2), (1, 1)), max_new_tokens=3)
    check_decoder(built, {"name": "sampling"}, prompts=((0, 1, 2), (1, 1)), max_new_tokens=3)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="automaton must be one of"):
        ARDTConfig(automaton="dyck")
    with pytest.raises(ValueError, match="window"):
        ARDTConfig(window=0)
    from genloom.core.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="vocab_size"):
        model_for("parity").ctx.build("backbone", {"name": "ardt", "automaton": "mod3"})
