"""The encoder-decoder form of source conditioning: the baseline ``encoder-decoder`` backbone and
the core's :class:`~genloom.core.state.EncoderMemoryState` (cross-attention memory computed once
per request, carried through reorder, rollback, keep, extend and snapshot)."""

from __future__ import annotations

import pytest
import torch

from genloom.core.data import source_block
from genloom.core.generation import Generator, run
from genloom.core.pattern import FULL, prefix
from genloom.core.state import EncoderMemoryState
from genloom.testing import tiny_model, train_briefly

S, T = 5, 6
PAD = 256
SOURCES = [list(b"abc"), list(b"hello"), list(b"x"), list(b"qrst")]


def _config(**backbone):
    return {
        "data": {"name": "seq2seq", "source_length": S, "target_length": T, "max_length": 5, "train_size": 50, "eval_size": 10},
        "tokenizer": {"name": "bytes"},
        "head": {"name": "lm", "tie_weights": False},  # untied: greedy tokens follow the source, not the input token
        "backbone": {"name": "encoder-decoder", "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "n_heads": 4, **backbone},
        "objective": {"name": "next-token"},
    }


@pytest.fixture(scope="module")
def built():
    b = tiny_model(base=_config(), seed=0)
    b.model.double().eval()
    with torch.no_grad():
        for p in b.model.parameters():
            p.mul_(3.0)  # attention far from uniform, so a wrong memory row or position shows
    return b


def _sequences(n=3, seed=3):
    """Prefix-LM layouts: left-padded source blocks of different real lengths, then random targets."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        src = torch.randint(0, 256, (1 + i % S,), generator=g).tolist()
        rows.append(source_block(src, S, PAD) + torch.randint(0, 257, (T,), generator=g).tolist())
    return torch.tensor(rows)


class _Counter:
    """Counts the encoder's calls and the rows it encodes, and the cross-attention memory projections."""

    def __init__(self, model, monkeypatch):
        self.calls, self.rows, self.memory = 0, 0, 0
        backbone = model.backbone
        encode, memory = backbone.encode, backbone.memory

        def counted_encode(source):
            self.calls += 1
            self.rows += source.shape[0]
            return encode(source)

        def counted_memory(encoded):
            self.memory += 1
            return memory(encoded)

        monkeypatch.setattr(backbone, "encode", counted_encode)
        monkeypatch.setattr(backbone, "memory", counted_memory)


# -- full forward == cached decoding ----------------------------------------------------------------
def test_the_backbone_reads_the_prefix_lm_layout(built):
    assert built.model.objective.pattern == prefix(S)
    assert built.model.backbone.source_length == S
    assert isinstance(built.model.init_state(2, 16), EncoderMemoryState)


@pytest.mark.parametrize("chunks", [(S, 1, 1, 1, 1, 1, 1), (S + 2, 3, 1, 1), (S + T,)])
def test_full_forward_equals_cached_decoding(built, chunks):
    """The training pass under prefix(S) and cached decoding in chunks (the source block first, then
    the target a few tokens at a time) give the same logits at every position, to 1e-10."""
    model = built.model
    ids = _sequences()
    full = model(ids)
    state = model.init_state(ids.shape[0], S + T)
    out, at = [], 0
    for n in chunks:
        out.append(model(ids[:, at : at + n], state=state))
        at += n
    torch.testing.assert_close(torch.cat(out, 1), full, rtol=0, atol=1e-10)
    assert state.lengths.tolist() == [S + T] * ids.shape[0] and bool(state.ready.all())
    # a broken variant: the rows' memories exchanged after the prefill changes the target logits
    state = model.init_state(ids.shape[0], S + T)
    model(ids[:, :S], state=state)
    state.memory = [m.roll(1, 0) for m in state.memory]
    assert not torch.allclose(model(ids[:, S : S + 1], state=state)[:, 0], full[:, S])


def test_the_conformance_kit_accepts_the_backbone():
    """The kit's backbone contract (state_dict round trip, determinism, gradients to every parameter,
    full == token-by-token == chunked, rollback, snapshot, left padding, reorder) with a one-position
    source block, the only block the kit's token-by-token pass can feed whole."""
    from genloom.testing import check_backbone

    node = {"name": "encoder-decoder", "d_model": 16, "encoder_layers": 1, "decoder_layers": 2, "n_heads": 2}
    check_backbone(node, values={"source_length": 1}, pattern=prefix(1), tol=1e-10)


def test_left_padded_prompts_of_different_lengths(built):
    """A prefill whose rows hold target prefixes of different lengths (left padding with a validity
    mask, as Session builds it) gives each row the logits of its own unpadded forward."""
    model = built.model
    ids = _sequences()
    prompts = [ids[0, : S + 3].tolist(), ids[1, :S].tolist(), ids[2, : S + 1].tolist()]
    padded, valid = torch.full((3, S + 3), PAD), torch.zeros(3, S + 3, dtype=torch.bool)
    for b, p in enumerate(prompts):
        padded[b, S + 3 - len(p) :] = torch.tensor(p)
        valid[b, S + 3 - len(p) :] = True
    state = model.init_state(3, S + T)
    last = model(padded, state=state, valid=valid)[:, -1]
    nxt = torch.tensor([[ids[b, len(p)]] for b, p in enumerate(prompts)])
    after = model(nxt, state=state)[:, -1]
    for b, p in enumerate(prompts):
        alone = model(torch.tensor([p + [int(nxt[b])]]))
        torch.testing.assert_close(last[b], alone[0, -2], rtol=0, atol=1e-10)
        torch.testing.assert_close(after[b], alone[0, -1], rtol=0, atol=1e-10)


# -- what depends on what ---------------------------------------------------------------------------
def _dependence(model, pattern):
    """|d output[q] / d input[k]| summed over features, (L, L), on random inputs."""
    torch.manual_seed(0)
    L = S + T
    h = torch.randn(1, L, model.ctx.d_model, dtype=torch.float64, requires_grad=True)
    out = model.backbone(h, pattern=pattern)
    rows = []
    for q in range(L):
        (grad,) = torch.autograd.grad((out[0, q] * torch.randn(out.shape[-1], dtype=torch.float64)).sum(), h, retain_graph=True)
        rows.append(grad[0].abs().sum(-1))
    return torch.stack(rows)


def _dependence_ok(dep):
    L = dep.shape[0]
    encoder_sees_target = float(dep[: S - 1, S:].max()) > 0.0  # the encoder outputs never see a target input
    targets_see_source = bool((dep[S - 1 :, :S] > 1e-12).all())  # every target position sees every source position
    later = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    later[:, :S] = False
    future = float(dep[later].max()) > 0.0
    return not encoder_sees_target, targets_see_source, not future


def test_the_target_never_reaches_the_encoder_and_the_source_reaches_every_target(built, monkeypatch):
    assert _dependence_ok(_dependence(built.model, prefix(S))) == (True, True, True)
    # the memory equals the encoder's output of the source alone, whatever the target
    model, ids = built.model, _sequences()
    state = model.init_state(3, S + T)
    model(ids, state=state)
    other = ids.clone()
    other[:, S:] = (other[:, S:] + 7) % 257
    again = model.init_state(3, S + T)
    model(other, state=again)
    for a, b in zip(state.memory, again.memory):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a broken variant: a full pattern in the decoder lets a target position read later targets
    from genloom.plugins.baseline import encoder_decoder

    monkeypatch.setattr(encoder_decoder, "_REFUSED", ())
    assert _dependence_ok(_dependence(model, FULL))[2] is False


def test_wrong_patterns_and_partial_sources_are_refused(built):
    model = built.model
    with pytest.raises(ValueError, match="prefix"):
        model(_sequences(), pattern=FULL)
    with pytest.raises(ValueError, match="prefix"):
        model(_sequences(), pattern=prefix(S + 1))
    state = model.init_state(1, S + T)
    with pytest.raises(ValueError, match="source block whole"):
        model(_sequences(1)[:, : S - 2], state=state)


# -- the state contract -----------------------------------------------------------------------------
def test_memory_is_computed_once_per_request(built, monkeypatch):
    """Greedy over a batch encodes each source once, at the prefill; no later step projects the
    memory again. Speculative decoding (which prefills, rolls back one position and feeds the last
    source id again) and continuous batching (each request prefilled alone) encode once per request too."""
    gen, model = Generator(built), built.model
    count = _Counter(model, monkeypatch)
    gen.generate(source=SOURCES, max_new_tokens=T, decoder="greedy")
    assert (count.calls, count.rows, count.memory) == (1, len(SOURCES), 1)
    count.calls = count.rows = count.memory = 0
    dec = built.ctx.build("decoder", {"name": "speculative", "draft": _config(), "gamma": 3, "greedy": True})
    dec._draft = model
    run(model, gen.source_prompts(SOURCES), dec, max_new_tokens=T, seed=0)
    assert count.rows == 2 * len(SOURCES) and count.calls == 2  # once in the target, once in the draft
    count.calls = count.rows = count.memory = 0
    gen.serve([{"prompt": p, "max_new_tokens": T, "arrival": i} for i, p in enumerate(gen.source_prompts(SOURCES))], decoder="greedy")
    assert count.rows == len(SOURCES) and count.calls == count.memory == len(SOURCES)


def test_rollback_snapshot_keep_and_bytes(built):
    model = built.model
    ids = _sequences(2)
    full = model(ids)
    state = model.init_state(2, S + T)
    model(ids[:, : S + 2], state=state)
    snap = state.snapshot()
    model(ids[:, S + 2 : S + 5], state=state)
    state.restore(snap)
    torch.testing.assert_close(model(ids[:, S + 2 : S + 3], state=state)[:, 0], full[:, S + 2], rtol=0, atol=1e-10)
    # rollback by one (the target's last token) and into the start position: the memory stays
    state.rollback(state.lengths - 2)
    assert state.lengths.tolist() == [S + 1] * 2
    torch.testing.assert_close(model(ids[:, S + 1 : S + 3], state=state), full[:, S + 1 : S + 3], rtol=0, atol=1e-10)
    state.rollback(S - 1)
    torch.testing.assert_close(model(ids[:, S - 1 : S + 1], state=state), full[:, S - 1 : S + 1], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="encoded source"):
        state.rollback(S - 3)
    # keep a prefix of the last advance (a tree's accepted path that is a chain) == rollback to it
    model(ids[:, S + 1 : S + 5], state=state)
    state.keep(torch.tensor([[True, True, False, False], [True, False, False, False]]))
    assert state.lengths.tolist() == [S + 3, S + 2]
    nxt = model(torch.stack([ids[0, S + 3 : S + 4], ids[1, S + 2 : S + 3]]), state=state)[:, 0]
    torch.testing.assert_close(nxt, torch.stack([full[0, S + 3], full[1, S + 2]]), rtol=0, atol=1e-10)
    # rolling back to 0 forgets the request; the next prefill encodes again
    state.rollback(0)
    assert not bool(state.ready.any())
    torch.testing.assert_close(model(ids, state=state), full, rtol=0, atol=1e-10)
    # bytes: the decoder cache plus a memory whose size does not grow with the target
    memory = 2 * 2 * 2 * 4 * S * 8 * 8  # (k, v) x layers x rows x heads x S x head_dim x 8 bytes (float64)
    assert state.memory_nbytes == memory and state.nbytes == state.decoder.nbytes + memory + 2


def test_extend_and_compact_admit_requests_prefilled_alone(built):
    model = built.model
    ids = _sequences(3)
    full = model(ids)
    states = []
    for b in range(3):
        st = model.init_state(1, S + T)
        model(ids[b : b + 1, : S + b], state=st)
        states.append(st)
    batch = states[0]
    batch.extend(states[1])
    batch.extend(states[2])
    batch.reorder(torch.tensor([2, 0, 1]))
    batch.compact()
    nxt = torch.tensor([[int(ids[b, S + b])] for b in (2, 0, 1)])
    out = model(nxt, state=batch)[:, 0]
    torch.testing.assert_close(out, torch.stack([full[b, S + b] for b in (2, 0, 1)]), rtol=0, atol=1e-10)


# -- decoders ------------------------------------------------------------------------------------------
def _greedy_uncached(model, source, n):
    ids = source_block(source, S, PAD)
    out = []
    for _ in range(n):
        t = int(model(torch.tensor([ids]))[0, -1].argmax())
        out.append(t)
        ids.append(t)
        if t == PAD:
            break
    return out


def test_greedy_and_sampling_match_solo_and_uncached_runs(built):
    gen, model = Generator(built), built.model
    batch = gen.generate(source=SOURCES, max_new_tokens=T, decoder="greedy").ids
    for b, s in enumerate(SOURCES):
        assert batch[b] == gen.generate(source=s, max_new_tokens=T, decoder="greedy").ids[0] == _greedy_uncached(model, s, T)
    prompts = gen.source_prompts(SOURCES)
    solo = [gen.generate(p, max_new_tokens=T, decoder="sampling", seed=10 + i).ids[0] for i, p in enumerate(prompts)]
    served = gen.serve([{"prompt": p, "max_new_tokens": T, "arrival": i, "seed": 10 + i} for i, p in enumerate(prompts)], decoder="sampling")
    assert [c.ids for c in served.completions] == solo
    assert len({tuple(s) for s in solo}) > 1


def test_serve_equals_solo_greedy_and_catches_an_unreordered_memory(built, monkeypatch):
    """Continuous batching drops finished rows with ``reorder``: every request's tokens equal its solo
    run. Broken variant: a reorder that keeps the memory rows in place (only the decoder cache moves)."""
    gen = Generator(built)
    prompts = gen.source_prompts(SOURCES)
    solo = [gen.generate(p, max_new_tokens=2 * T, decoder="greedy").ids[0] for p in prompts]
    requests = [{"prompt": p, "max_new_tokens": 2 + 2 * i, "arrival": i} for i, p in enumerate(prompts)]
    served = gen.serve(requests, decoder="greedy")
    assert [c.ids for c in served.completions] == [s[: 2 + 2 * i] for i, s in enumerate(solo)]
    requests = [{"prompt": p, "max_new_tokens": 1 + 2 * i, "arrival": 0} for i, p in enumerate(prompts)]  # the first finishes first
    served = [c.ids for c in gen.serve(requests, decoder="greedy").completions]
    assert served == [s[: 1 + 2 * i] for i, s in enumerate(solo)]

    def unreordered(self, index):
        index = index.to(self.ready.device)
        self.memory = [m[: index.numel()] for m in self.memory]
        self.ready = self.ready.index_select(0, index)
        self.decoder.reorder(index)

    monkeypatch.setattr(EncoderMemoryState, "reorder", unreordered)
    broken = [c.ids for c in gen.serve(requests, decoder="greedy").completions]
    assert broken != served


def test_beam_search_batch_equals_solo(built, monkeypatch):
    """Beam search reorders the state across beams every step: a batch of sources gives each the
    hypotheses it gets alone. Broken variant: a reorder that takes the memory rows of another
    request (the index reversed) changes them."""
    gen = Generator(built)
    node = {"name": "beam", "num_beams": 3}
    batch = gen.generate(source=SOURCES, max_new_tokens=T, decoder=node).ids
    assert batch == [gen.generate(source=s, max_new_tokens=T, decoder=node).ids[0] for s in SOURCES]
    original = EncoderMemoryState.reorder

    def wrong_rows(self, index):
        original(self, index)
        self.memory = [m.flip(0) for m in self.memory]

    monkeypatch.setattr(EncoderMemoryState, "reorder", wrong_rows)
    assert gen.generate(source=SOURCES, max_new_tokens=T, decoder=node).ids != batch


@pytest.mark.parametrize("node", [
    {"name": "speculative", "gamma": 3, "greedy": True},
    {"name": "stree", "greedy": True},  # a token tree: the draft branches with copy.copy + reorder, the target verifies each path
    {"name": "duodecoding", "gamma": 3, "greedy": True, "concurrent": False},
])
@pytest.mark.parametrize("draft", ["target", "smaller"])
def test_draft_model_decoders_with_an_encoder_decoder_draft_equal_greedy(built, node, draft):
    """Greedy speculative and tree-speculative decoding (drafts verified in one pass, rejected ones
    rolled back or dropped with ``keep``) equal greedy token for token, with the target itself or a
    smaller encoder-decoder as the draft."""
    gen, model = Generator(built), built.model
    prompts = gen.source_prompts(SOURCES)
    greedy = run(model, prompts, built.ctx.build("decoder", "greedy"), max_new_tokens=T, seed=0).ids
    dec = built.ctx.build("decoder", {**node, "draft": _config(encoder_layers=1, decoder_layers=1, d_model=16)})
    if draft == "target":
        dec._draft = model
    else:
        dec.draft.double()
    assert run(model, prompts, dec, max_new_tokens=T, seed=0).ids == greedy


# -- training ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_trains_on_the_reverse_task_to_a_high_exact_match():
    """Reverse strings of 3-5 letters with a 1 + 1 layer encoder-decoder: the held-out test split's
    exact match (greedy, whole target and end-of-sequence) after 400 steps is far above chance."""
    base = {
        "data": {"name": "seq2seq", "task": "reverse", "source_length": 5, "target_length": 6, "max_length": 5, "train_size": 5000, "eval_size": 100},
        "tokenizer": {"name": "bytes"}, "head": {"name": "lm"}, "objective": {"name": "next-token"},
        "backbone": {"name": "encoder-decoder", "d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "n_heads": 4},
    }
    built = train_briefly(tiny_model(base=base, data=True, seed=0), 400, lr=3e-3)
    test = built.data.load("test", built.model.tokenizer, built.ctx)
    result = Generator(built).generate(source=[s for s, _ in test.pairs], max_new_tokens=6, decoder="greedy")
    exact = sum(ids == t + [test.eos_id] for ids, (_, t) in zip(result.ids, test.pairs)) / len(test.pairs)
    assert exact >= 0.7, exact  # measured 0.940
