"""The ``linear_recurrence`` backends against the peer's definitions: flash-linear-attention's
(fla-core) naive recurrent references for simple GLA (a scalar decay per head: retention, GateLoop)
and GLA (a decay per key channel). Their layout is (B, T, H, K) and they scale q by K^-1/2 and
compute in float32; ours is (B, H, L, K) with the scale left to the caller."""

import pytest
import torch

fla_simple = pytest.importorskip("fla.ops.simple_gla.naive", reason="fla-core is the peer (pip install fla-core)")
fla_gla = pytest.importorskip("fla.ops.gla.naive")

from genloom.kernels import linear_recurrence  # noqa: E402

BACKENDS = {"reference": linear_recurrence.make_reference(), "parallel": linear_recurrence.make_parallel(), "chunkwise": linear_recurrence.make_chunkwise()}
B, H, L, K, V = 2, 3, 37, 8, 6


def _inputs(per_channel: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, L, K, generator=g) for _ in range(2))
    v = torch.randn(B, H, L, V, generator=g)
    decay = -torch.rand(B, H, L, K if per_channel else 1, generator=g) * 0.3
    return q, k, v, (decay if per_channel else decay[..., 0])


def _fla(q, k, v, g, per_channel: bool):
    t = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731
    if per_channel:
        y, state = fla_gla.naive_recurrent_gla(t(q), t(k), t(v), t(g), output_final_state=True)
    else:
        y, state = fla_simple.naive_recurrent_simple_gla(t(q), t(k), t(v), t(g), scale=K ** -0.5, output_final_state=True)
    return y.transpose(1, 2), state


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar-decay", "per-channel-decay"])
@pytest.mark.parametrize("name", list(BACKENDS))
def test_backends_equal_the_fla_naive_recurrence(name, per_channel):
    q, k, v, g = _inputs(per_channel)
    ours, state = BACKENDS[name](q * K ** -0.5, k, v, g)
    theirs, their_state = _fla(q, k, v, g, per_channel)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    assert torch.allclose(state, their_state, atol=1e-5, rtol=1e-4)


def test_the_comparison_can_fail():
    """Broken variants against the same reference: the decay applied after the new key/value is
    added (h = a (h + k^T v)), and the state read before the update (y[t] = q[t] h[t-1])."""
    q, k, v, g = _inputs(False)
    theirs, _ = _fla(q, k, v, g, False)
    a = g.exp()
    h = torch.zeros(B, H, K, V)
    late, early = [], []
    for t in range(L):
        kv = k[:, :, t, :, None] * v[:, :, t, None, :]
        early.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t] * K ** -0.5, h))
        h = a[:, :, t, None, None] * (h + kv)
        late.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t] * K ** -0.5, h))
    assert not torch.allclose(torch.stack(late, 2), theirs, atol=1e-3)
    assert not torch.allclose(torch.stack(early, 2), theirs, atol=1e-3)
