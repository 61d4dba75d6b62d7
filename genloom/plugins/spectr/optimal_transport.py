"""The optimal draft selection as a linear program, for tiny vocabularies (tests and reports).

The paper's optimal transport with membership cost: over couplings ``pi(s, y)`` of ``q^{(x)k}`` (the
``k`` i.i.d. candidates ``s``) and ``p`` (the output ``y``), maximise ``P(y in s)``. The program has
``V^k * V`` variables, so it is only for checking K-SEQ against the optimum on small ``V`` and ``k``.
Needs scipy (the ``test`` extra); it is imported when the function is called.
"""

from __future__ import annotations

import itertools

import numpy as np


def optimal_acceptance(p, q, num_drafts: int) -> float:
    """The largest ``P(Y in {X_1..X_k})`` over all valid draft selections (``Y ~ p`` exactly)."""
    from scipy.optimize import linprog

    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    vocab = p.shape[-1]
    sets = list(itertools.product(range(vocab), repeat=num_drafts))
    num_vars = len(sets) * vocab  # variable (s, y) at index s_index * vocab + y
    reward = np.zeros(num_vars)
    rows, rhs = [], []
    for index, candidates in enumerate(sets):
        for y in set(candidates):
            reward[index * vocab + y] = 1.0
        row = np.zeros(num_vars)
        row[index * vocab : (index + 1) * vocab] = 1.0
        rows.append(row)
        rhs.append(float(np.prod(q[list(candidates)])))
    for y in range(vocab - 1):  # the last output marginal follows from the others (both sum to 1)
        row = np.zeros(num_vars)
        row[y::vocab] = 1.0
        rows.append(row)
        rhs.append(p[y])
    result = linprog(-reward, A_eq=np.stack(rows), b_eq=np.asarray(rhs), bounds=(0, None), method="highs")
    if not result.success:
        raise RuntimeError(f"linear program failed: {result.message}")
    return float(-result.fun)
