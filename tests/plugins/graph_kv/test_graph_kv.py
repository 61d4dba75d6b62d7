"""Graph-KV: a target segment reads only its designated sources (perturbing any other segment
leaves its outputs exactly unchanged); source segments sharing a positional range are encoded
independently (their cached keys and values equal a standalone encoding); decoding the answer
from the cache equals recomputing it under the same graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genloom.core.errors import GenerationError
from genloom.core.generation import run
from genloom.core.pattern import segment_rows
from genloom.plugins.graph_kv import GraphKVConfig
from genloom.plugins.graph_kv.decoder import GraphKVDecoder, graph_pattern, parse_edges
from genloom.testing import check_decoder, check_model_config, tiny_model

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "graph-kv.yaml"
SMALL = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.n_heads=4"]
SEP = 10
# sources "ab\n" and "wxyz\n"; target 0 "pq\n" reads source 0; target 1 "rs\n" reads both; question "t"
A, B, T0, T1, Q = [97, 98, SEP], [119, 120, 121, 122, SEP], [112, 113, SEP], [114, 115, SEP], [116, 117]
PROMPT = A + B + T0 + T1 + Q
EDGES = ["0", "0,1"]


@pytest.fixture(scope="module")
def model():
    built = tiny_model(CONFIG, SMALL, seed=0)
    return built, built.model.double().eval()


def pattern_of(ids):
    return graph_pattern(ids, SEP, 2, parse_edges(EDGES))


def test_the_prompt_becomes_the_segment_graph():
    pat = pattern_of(PROMPT)
    assert pat.segment_lengths == (3, 5, 3, 3)
    assert pat.sources == ((), (), (0,), (0, 1))
    # sources share positions 0..; targets start after the longest source (5); the question after the targets
    assert pat.positions(torch.arange(len(PROMPT))).tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9]
    assert int(pat.dense(len(PROMPT)).sum()) == 97  # allowed pairs; 136 for the serialised causal prefill
    with pytest.raises(GenerationError, match="decoder.sources"):
        pattern_of(A + B)


def test_a_target_ignores_every_segment_it_does_not_read(model):
    _, m = model
    ids = torch.tensor([PROMPT])
    pat = pattern_of(PROMPT)
    t0 = slice(8, 11)
    with torch.no_grad():
        out = m(ids, pattern=pat)
        for segment in (slice(3, 8), slice(11, 14), slice(14, 16)):  # source 1, target 1, the question
            moved = ids.clone()
            moved[0, segment] = (moved[0, segment] + 7) % 256
            moved[0, 7] = SEP  # keep the segmentation
            assert torch.equal(m(moved, pattern=pat)[0, t0], out[0, t0])
        moved = ids.clone()
        moved[0, 0] = 100  # source 0 is read by target 0: the check can fail
        assert (m(moved, pattern=pat)[0, t0] - out[0, t0]).abs().max() > 1e-6
        # broken variant: the serialised (causal) reading lets target 0 see source 1
        moved = ids.clone()
        moved[0, 3:7] = torch.tensor([65, 66, 67, 68])
        assert (m(moved)[0, t0] - m(ids)[0, t0]).abs().max() > 1e-6


def _cache_kv(state, layer, row, slots):
    return state.k[layer][row, :, slots], state.v[layer][row, :, slots]


def test_sources_are_encoded_as_standalone_sequences(model):
    """The prefill's cached keys/values of every source equal those of encoding it alone."""
    built, m = model
    decoder = GraphKVDecoder(GraphKVConfig(separator_id=SEP, sources=2, edges=EDGES))
    # two rows with different segment lengths (one pattern per row), the second left-padded
    other = [65, SEP] + [66, 67, SEP] + [68, SEP] + [69, SEP] + [70]
    from genloom.core.generation import Session

    session = Session(m, [PROMPT, other], max_new_tokens=1)
    decoder.start(session)
    state = session.state
    pad = session.prompt_ids.shape[1] - len(other)
    for row, ids, offset in ((0, PROMPT, 0), (1, other, pad)):
        lengths = graph_pattern(ids, SEP, 2, parse_edges(EDGES)).segment_lengths
        start = 0
        for s in range(2):
            alone = m.init_state(1, 8)
            with torch.no_grad():
                m(torch.tensor([ids[start : start + lengths[s]]]), state=alone)
            for layer in range(2):
                got = _cache_kv(state, layer, row, slice(offset + start, offset + start + lengths[s]))
                expect = _cache_kv(alone, layer, 0, slice(0, lengths[s]))
                assert (got[0] - expect[0]).abs().max() < 1e-12 and (got[1] - expect[1]).abs().max() < 1e-12
            start += lengths[s]
    # broken variant: a serialised prefill encodes source 1 after source 0 (other keys and positions)
    serial = m.init_state(1, 32)
    with torch.no_grad():
        m(torch.tensor([PROMPT]), state=serial)
        alone = m.init_state(1, 8)
        m(torch.tensor([B]), state=alone)
    assert (_cache_kv(serial, 1, 0, slice(3, 8))[0] - _cache_kv(alone, 1, 0, slice(0, 5))[0]).abs().max() > 1e-6


def test_cached_decoding_equals_recompute_under_the_graph(model):
    built, m = model
    prompts = [PROMPT, [65, SEP, 66, 67, SEP, 68, SEP, 69, SEP, 70]]
    decoder = GraphKVDecoder(GraphKVConfig(separator_id=SEP, sources=2, edges=EDGES, greedy=True))
    result = run(m, prompts, decoder, max_new_tokens=6)
    with torch.no_grad():
        for prompt, generated in zip(prompts, result.ids):
            seq = list(prompt)
            for _ in generated:
                pat = segment_rows([pattern_of(prompt)])
                seq.append(int(m(torch.tensor([seq]), pattern=pat)[0, -1].argmax()))
            assert seq[len(prompt):] == list(generated)


def test_bad_config_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="edges\\[0\\]"):
        GraphKVConfig(edges=["0;1"])
    with pytest.raises(ValueError, match="edges\\[1\\] names source 3"):
        GraphKVDecoder(GraphKVConfig(sources=2, edges=["0", "3"]))


def test_shipped_config_trains_and_decodes(model):
    built, _ = model
    torch.manual_seed(0)
    check_model_config(CONFIG, SMALL, batch={"ids": torch.randint(0, 256, (2, 17))})
    check_decoder(built, {"name": "graph-kv", "separator_id": SEP, "sources": 2, "edges": EDGES}, prompts=(PROMPT, A + B + T0 + T1), max_new_tokens=4)
