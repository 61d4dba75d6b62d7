"""Small finite automata and their chain-of-thought traces.

Token ids: input symbols ``0 .. |S|-1``, then the separator ``=`` (id |S|), then the states
``|S|+1 ..``. A trace of input x (length n) is ``x_1 .. x_n = q_1 .. q_n`` with
``q_i = delta(q_{i-1}, x_i)`` from the start state q_0 (not written).
"""

from __future__ import annotations

import random

# name: (alphabet size, number of states, transition table delta[state][symbol], start state)
TABLES = {
    "parity": (2, 2, [[0, 1], [1, 0]], 0),
    "mod3": (3, 3, [[0, 1, 2], [1, 2, 0], [2, 0, 1]], 0),
    "ab-star": (2, 3, [[1, 2], [1, 0], [2, 2]], 0),  # accepts (ab)*: state 2 is a sink
}


def vocabulary_size(name: str) -> int:
    symbols, states, _, _ = TABLES[name]
    return symbols + 1 + states


def separator(name: str) -> int:
    return TABLES[name][0]


def states(name: str, inputs: list[int]) -> list[int]:
    """The state after each input symbol, as token ids."""
    symbols, _, delta, state = TABLES[name]
    out = []
    for x in inputs:
        state = delta[state][x]
        out.append(symbols + 1 + state)
    return out


def trace(name: str, inputs: list[int]) -> list[int]:
    return list(inputs) + [separator(name)] + states(name, inputs)


def random_inputs(name: str, length: int, count: int, seed: int, exclude=()) -> list[list[int]]:
    """``count`` distinct random input strings (not in ``exclude``) of ``length`` symbols."""
    symbols = TABLES[name][0]
    rng = random.Random(seed)
    seen, out = set(map(tuple, exclude)), []
    limit = symbols ** length
    while len(out) < min(count, limit - len(seen)):
        x = tuple(rng.randrange(symbols) for _ in range(length))
        if x not in seen:
            seen.add(x)
            out.append(list(x))
    return out
