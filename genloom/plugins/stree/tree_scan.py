"""The ``tree_selective_scan`` op: Mamba's selective scan over a token tree.

Every node of the tree continues the recurrence of its parent (a root continues ``initial_state``)::

    h[i] = exp(delta[i] * A) * h[parent(i)] + delta[i] * B[i] * u[i]
    y[i] = (<C[i], h[i]> + D * u[i]) * silu(z[i])

Two backends:

- ``recurrence`` (the definition): the recurrence above, node by node in breadth-first order;
- ``accumulated`` (STree): all nodes at once from accumulated state-transition products. With
  ``S[i]`` the sum of ``delta`` over the root-to-i path, the product of the transitions from node a
  (exclusive) down to node i is ``exp(A * (S[i] - S[a]))``, so
  ``h[i] = sum_{a ancestor of i, or i} exp(A (S[i] - S[a])) delta[a] B[a] u[a] + exp(A S[i]) h0``:
  a masked, attention-like product over the ancestor matrix (the tree mask), one batched einsum.

Shapes: u, delta, z (B, N, E) with ``delta`` already discretized (softplus and bias applied);
A (E, S); B, C (B, N, S); D (E,); initial_state (B, E, S). Returns ``y`` (B, N, E) in ``u``'s dtype
and every node's state (B, E, N, S) in the compute dtype (float64 for float64, else float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genloom.core.pattern import tree_ancestors


def _work(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _output(u, H, C, D, z, work):
    y = torch.einsum("bens,bns->bne", H, C.to(work))
    if D is not None:
        y = y + D.to(work) * u.to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(u.dtype), H


def _h0(u, A, initial_state, work):
    if initial_state is None:
        return u.new_zeros(u.shape[0], A.shape[0], A.shape[1], dtype=work)
    return initial_state.to(work)


class Recurrence:
    """The definition: the recurrence node by node (each node reads its parent's state)."""

    name = "recurrence"

    def supports(self, **_):
        return None

    def __call__(self, u, delta, A, B, C, D=None, z=None, *, parents, initial_state=None):
        work = _work(u.dtype)
        h0 = _h0(u, A, initial_state, work)
        A, dl, x = A.to(work), delta.to(work), (delta.to(work) * u.to(work))
        states = []
        for i, p in enumerate(parents):
            prev = h0 if p < 0 else states[p]
            states.append(torch.exp(dl[:, i, :, None] * A) * prev + x[:, i, :, None] * B[:, i, None, :].to(work))
        return _output(u, torch.stack(states, 2), C, D, z, work)


class Accumulated:
    """STree: every node's state from accumulated transition products over the ancestor mask."""

    name = "accumulated"

    def supports(self, **_):
        return None

    def __call__(self, u, delta, A, B, C, D=None, z=None, *, parents, initial_state=None):
        work = _work(u.dtype)
        h0 = _h0(u, A, initial_state, work)
        anc = tree_ancestors(parents)[0].to(u.device)  # (N, N): anc[i, a]
        A, dl = A.to(work), delta.to(work)
        S = torch.einsum("ia,bae->bie", anc.to(work), dl)  # summed step sizes along each root-to-node path
        gap = torch.where(anc[None, :, :, None], S[:, :, None] - S[:, None, :], 0.0)  # (B, N_i, N_a, E)
        decay = torch.exp(gap[..., None] * A) * anc[None, :, :, None, None]  # transitions from a (excl.) to i
        x = (dl * u.to(work))[..., None] * B.to(work)[:, :, None, :]  # (B, N_a, E, S)
        H = torch.einsum("biaes,baes->bies", decay, x) + torch.exp(S[..., None] * A) * h0[:, None]
        return _output(u, H.permute(0, 2, 1, 3), C, D, z, work)


def make_recurrence(config=None, ctx=None):
    return Recurrence()


def make_accumulated(config=None, ctx=None):
    return Accumulated()
