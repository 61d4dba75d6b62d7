"""Prophet on a tiny trained masked-diffusion model: fewer steps, same answers."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "radd"))
from mdiff_task import evaluate, prompts_and_targets, train  # noqa: E402


@pytest.mark.slow
def test_prophet_saves_steps_on_a_trained_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        built, _, loss = train(steps=300)
        P, T = prompts_and_targets(32)
        base = evaluate(built, {"name": "masked-diffusion"}, P, T)
        same = evaluate(built, {"name": "prophet", "thresholds": [float("inf")] * 3, "answer_length": 7}, P, T)
        fast = evaluate(built, {"name": "prophet", "thresholds": [0.9, 0.7, 0.5], "answer_length": 7}, P, T)
    finally:
        torch.set_num_threads(threads)
    assert loss < 1.0, "the tiny model did not train"
    assert base["answer"] > 0.5
    assert torch.equal(same["ids"], base["ids"]) and same["calls"] == base["calls"] == T.shape[1]
    rows = fast["decoder"].stats["row_steps"].float()
    assert (rows <= T.shape[1]).all()
    assert rows.mean().item() < 0.75 * T.shape[1]  # at least a quarter of the steps saved
    assert fast["answer"] >= base["answer"] - 0.1
    print(f"baseline answer acc {base['answer']:.3f} in {base['calls']} steps; prophet {fast['answer']:.3f} "
          f"in {rows.mean().item():.1f} steps per sequence ({fast['calls']} batched calls)")
