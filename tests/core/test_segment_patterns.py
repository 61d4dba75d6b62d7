"""Segment-level attention structure in the core: segment graphs, group-local (block-diagonal) and
axial row/column masks. The reference backend is the definition (checked against masks written
out pair by pair); every other backend agrees with it; a transformer reading a segment graph
encodes parallel sources exactly as standalone sequences, and decodes axial masks from its cache
exactly as it recomputes them."""

import math

import pytest
import torch

from genloom.core import kernels
from genloom.core.pattern import CAUSAL, AxialPattern, GroupLocalPattern, SegmentPattern, axial, group_local, segment_rows, segments
from genloom.testing import tiny_model

# sources A (3 tokens) and B (2 tokens) share positions 0.., target T (2 tokens) reads A only,
# a second target U (2 tokens) reads A and B; the tail (question, continuation) reads everything
GRAPH = dict(segment_lengths=[3, 2, 2, 2], sources=[[], [], [0], [0, 1]], segment_starts=[0, 0, 3, 3])


def _segment_of(p, lengths):
    edge = 0
    for s, n in enumerate(lengths):
        edge += n
        if p < edge:
            return s
    return len(lengths)


def explicit_segments(lengths, sources, within, L):
    """The segment graph written out pair by pair."""
    out = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            si, sj = _segment_of(i, lengths), _segment_of(j, lengths)
            if si == sj:
                out[i, j] = j <= i or (within == "full" and si < len(lengths))
            elif si == len(lengths):
                out[i, j] = True
            else:
                out[i, j] = sj in sources[si]
    return out


def explicit_axial(width, axis, causal, shift, L):
    out = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            ri, ci, rj, cj = i // width, i % width, j // width, j % width
            same, a, b = (ri == rj, ci, cj) if axis == "row" else (ci == cj, ri, rj)
            out[i, j] = same and (not causal or (b < a if shift else b <= a))
    return out


def test_segment_graph_is_the_written_out_graph():
    pat = segments(**GRAPH)
    L = 12  # 9 segment positions, then a 3-token tail
    expect = explicit_segments(GRAPH["segment_lengths"], GRAPH["sources"], "causal", L)
    assert torch.equal(pat.dense(L), expect)
    assert pat.is_causal
    full = segments(GRAPH["segment_lengths"], GRAPH["sources"], within="full")
    assert torch.equal(full.dense(L), explicit_segments(GRAPH["segment_lengths"], GRAPH["sources"], "full", L))
    assert not full.is_causal
    assert not segments([2, 2], [[1], []]).is_causal  # reading a later segment is not causal
    # model positions: both sources start at 0, both targets at 3 (after the longest source), the tail after that
    assert pat.positions(torch.arange(L)).tolist() == [0, 1, 2, 0, 1, 3, 4, 3, 4, 5, 6, 7]
    assert segments([2, 3]).positions(torch.arange(6)).tolist() == list(range(6))


def test_group_local_and_axial_are_the_written_out_masks():
    for size, causal in ((3, True), (3, False), (1, True)):
        pat = group_local(size, causal)
        expect = torch.tensor([[i // size == j // size and (j <= i or not causal) for j in range(10)] for i in range(10)])
        assert torch.equal(pat.dense(10), expect)
    for axis in ("row", "column"):
        for causal, shift in ((True, False), (False, False), (True, True)):
            assert torch.equal(axial(4, axis, causal, shift).dense(14), explicit_axial(4, axis, causal, shift, 14)), (axis, causal, shift)
    # with an offset, a leading class token is read by every pixel and the grid starts after it
    pat = axial(3, "column", offset=1)
    assert torch.equal(pat.dense(8)[1:, 1:], explicit_axial(3, "column", True, False, 7))
    assert pat.dense(8)[:, 0].all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: segments([2, 0]), "segment_lengths"),
        (lambda: segments([2, 2], [[2]]), "sources\\[0\\] names segment 2"),
        (lambda: segments([2], within="sideways"), "within"),
        (lambda: segments([2, 2], segment_starts=[0]), "segment_starts"),
        (lambda: group_local(0), "group_size"),
        (lambda: axial(4, "diagonal"), "axis"),
        (lambda: axial(4, causal=False, shift=True), "shift needs causal"),
        (lambda: axial(0), "width"),
    ],
)
def test_bad_structure_is_refused_with_the_field_named(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


PATTERNS = {
    "segments": segments(**GRAPH),
    "segments-full": segments(GRAPH["segment_lengths"], GRAPH["sources"], within="full"),
    "group-local": group_local(3),
    "group-local-full": group_local(4, causal=False),
    "axial-row": axial(4, "row"),
    "axial-row-full": axial(4, "row", causal=False),
    "axial-column": axial(4, "column"),
    "axial-column-shifted": axial(4, "column", shift=True),
}


def _explicit_attention(q, k, v, allowed):
    """softmax over the allowed keys times v; a query with no allowed key gives zeros."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.nan_to_num(scores.softmax(-1), nan=0.0)
    return probs @ v


def _case(dtype, L=13):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, L, 8, generator=g, dtype=dtype)
    k, v = (torch.randn(2, 2, L, 8, generator=g, dtype=dtype) for _ in range(2))  # grouped-query: 2 kv heads
    return q, k, v


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_reference_is_the_definition(name):
    pat = PATTERNS[name]
    q, k, v = _case(torch.float64)
    with kernels.use("attention", "reference") as ref:
        got = ref(q, k, v, pattern=pat)
    allowed = pat.dense(13)
    expect = _explicit_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), allowed)
    torch.testing.assert_close(got, expect, atol=1e-12, rtol=1e-12)
    # broken variant: plain causal attention over the same layout differs
    with kernels.use("attention", "reference") as ref:
        assert (ref(q, k, v, pattern=CAUSAL) - expect).abs().max() > 1e-3


def _backend_or_skip(backend, q, pat):
    why = kernels.implementation("attention", backend).supports(device=q.device, dtype=q.dtype, pattern=pat, requires_grad=False)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("backend", ["sdpa", "flex", "xformers"])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_backends_agree_with_the_reference(backend, name):
    """Plain layouts and a cache-like call (queries at absolute positions after a padded key)."""
    pat = PATTERNS[name]
    dtype = torch.float64 if backend == "sdpa" else torch.float32
    q, k, v = _case(dtype)
    if backend not in {r[0] for r in kernels.status("attention")}:
        pytest.skip(f"no {backend} backend registered")
    _backend_or_skip(backend, q, pat)
    kv_pos = torch.stack([torch.arange(13), torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(12)])])
    kv_valid = torch.ones(2, 13, dtype=torch.bool)
    kv_valid[1, 0] = False  # row 1 is left-padded by one key
    calls = [dict(), dict(q_pos=kv_pos[:, -5:], kv_pos=kv_pos, kv_valid=kv_valid)]
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for kw in calls:
        qq = q if not kw else q[:, :, -5:]
        with kernels.use("attention", "reference") as ref:
            expect = ref(qq, k, v, pattern=pat, **kw)
        with kernels.use("attention", backend) as fast:
            got = fast(qq, k, v, pattern=pat, **kw)
        torch.testing.assert_close(got, expect, atol=tol, rtol=tol)


def test_sdpa_gradients_agree_with_the_reference():
    for pat in (PATTERNS["segments"], PATTERNS["axial-column-shifted"], PATTERNS["group-local"]):
        grads = []
        for backend in ("reference", "sdpa"):
            q, k, v = (t.requires_grad_() for t in _case(torch.float64))
            with kernels.use("attention", backend) as impl:
                impl(q, k, v, pattern=pat).pow(2).sum().backward()
            grads.append((q.grad, k.grad, v.grad))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


CONFIG = {
    "tokenizer": {"name": "ids", "vocab_size": 11},
    "head": {"name": "lm", "init_std": 0.5, "tie_weights": False},
    "backbone": {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2},
    "objective": {"name": "next-token"},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model(base=CONFIG).model.double().eval()


def test_parallel_sources_are_encoded_as_standalone_sequences(model):
    """Sources sharing positions 0.. and reading nobody give exactly their standalone outputs; a
    target's output does not move when a segment it does not read changes."""
    pat = segments(**GRAPH)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1]])
    with torch.no_grad():
        out = model(ids, pattern=pat)
        assert (out[0, 0:3] - model(ids[:, 0:3])[0]).abs().max() < 1e-12
        assert (out[0, 3:5] - model(ids[:, 3:5])[0]).abs().max() < 1e-12
        other = ids.clone()
        other[0, 3:5] = torch.tensor([0, 0])  # source B: read by U and the tail, not by T
        moved = model(other, pattern=pat)
        assert (moved[0, 5:7] - out[0, 5:7]).abs().max() == 0  # T reads only A
        assert (moved[0, 7:9] - out[0, 7:9]).abs().max() > 1e-6  # U reads B: the check can fail
        # broken variant: the serialized (causal) layout lets source B depend on source A
        assert (model(ids)[0, 3:5] - model(ids[:, 3:5])[0]).abs().max() > 1e-6


@pytest.mark.parametrize("pat", [axial(4, "row"), axial(4, "column"), group_local(3), segments(**GRAPH)], ids=["row", "column", "group", "segments"])
def test_cached_decoding_equals_recompute(model, pat):
    """A causal structured pattern decodes from the KV cache (token by token and in chunks) exactly
    as the full forward computes it; the cache reads the pattern at absolute positions."""
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9]])
    with torch.no_grad():
        full = model(ids, pattern=pat)
        for chunks in ((1,) * 13, (4, 1, 3, 5)):
            state = model.init_state(2, 16)
            outs, at = [], 0
            for n in chunks:
                outs.append(model(ids[:, at : at + n], pattern=pat, state=state))
                at += n
            assert (torch.cat(outs, 1) - full).abs().max() < 1e-10, chunks
        assert (model(ids) - full).abs().max() > 1e-6  # the pattern matters: causal differs


def test_new_kinds_are_attention_patterns():
    for pat in PATTERNS.values():
        assert isinstance(pat, (SegmentPattern, GroupLocalPattern, AxialPattern))
        assert pat.kind in ("segments", "group_local", "axial")
        hash(pat)  # values: usable as keys of the kernel choice cache
    assert segments(**GRAPH) == segments(**GRAPH)


def test_segment_rows_give_each_row_its_own_graph():
    """Prompts whose segments differ per row: row b follows its own SegmentPattern exactly, in
    masks, model positions and every backend."""
    a = segments([2, 3], [[], [0]], segment_starts=[0, 0])
    b = segments([3, 1, 1], [[], [], [0, 1]], segment_starts=[0, 0, 3])
    rows = segment_rows([a, b])
    L = 9
    q, k = torch.arange(L)[None, :, None].expand(2, L, 1), torch.arange(L)[None, None, :].expand(2, 1, L)
    got = rows.allowed(q, k, row=torch.arange(2)[:, None, None])
    assert torch.equal(got[0], a.dense(L)) and torch.equal(got[1], b.dense(L))
    index = torch.arange(L).expand(2, L)
    assert torch.equal(rows.positions(index)[0], a.positions(torch.arange(L)))
    assert torch.equal(rows.positions(index)[1], b.positions(torch.arange(L)))
    with pytest.raises(ValueError, match="same 'within'"):
        segment_rows([a, segments([2], within="full")])
    qq, kk, vv = _case(torch.float64, L)
    with kernels.use("attention", "reference") as ref:
        expect = ref(qq, kk, vv, pattern=rows)
    for r in range(2):
        torch.testing.assert_close(expect[r], _explicit_attention(qq[r], kk[r].repeat_interleave(2, 0), vv[r].repeat_interleave(2, 0), got[r]), atol=1e-12, rtol=1e-12)
    for backend in ("sdpa", "flex"):
        with kernels.use("attention", backend) as fast:
            dtype = torch.float64 if backend == "sdpa" else torch.float32
            torch.testing.assert_close(fast(qq.to(dtype), kk.to(dtype), vv.to(dtype), pattern=rows), expect.to(dtype), atol=1e-5, rtol=1e-5)
