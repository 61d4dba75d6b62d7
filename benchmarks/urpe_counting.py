"""URPE against RPE attention on the paper's counterexample: identical tokens, position-dependent targets.

Every input is the same token repeated L = 16 times; the target at position i is i mod 2 (a
function of the position alone). Softmax attention with relative positions averages identical
values, so an RPE model gives every position the same output and cannot beat 50%; URPE's Toeplitz
C makes the averaged mass depend on the position. Both: the `urpe` backbone (d_model 16, 1 layer,
2 heads, max_distance 16), `universal` true or false, a learned input vector and a linear read-out,
300 Adam steps at lr 1e-2, seed 0, float32. Prints the accuracy over the 16 positions.

    python benchmarks/urpe_counting.py
"""

from __future__ import annotations

import torch

from genloom.testing import build


def accuracy(universal: bool, steps: int = 300, length: int = 16) -> float:
    torch.manual_seed(0)
    backbone, _ = build("backbone", {"name": "urpe", "d_model": 16, "n_layers": 1, "n_heads": 2, "max_distance": length, "universal": universal})
    token = torch.nn.Parameter(torch.randn(1, 1, 16))
    readout = torch.nn.Linear(16, 2)
    params = [token, *backbone.parameters(), *readout.parameters()]
    optimiser = torch.optim.Adam(params, lr=1e-2)
    target = torch.arange(length) % 2
    for _ in range(steps):
        logits = readout(backbone(token.expand(1, length, 16)))[0]
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        predicted = readout(backbone(token.expand(1, length, 16)))[0].argmax(-1)
    return (predicted == target).float().mean().item()


if __name__ == "__main__":
    torch.set_num_threads(1)
    for universal in (False, True):
        print(f"{'URPE' if universal else 'RPE '} (universal={universal}): accuracy {accuracy(universal):.3f}")
