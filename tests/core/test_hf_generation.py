"""Generation agrees with transformers on identical weights: beam search (with and without EOS,
every early_stopping mode, several hypotheses), EOS sets, the processors, generation_config.json."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import genloom
from genloom.core.hf import import_llama
from genloom.plugins.baseline import decoders as baseline_decoders
from genloom.plugins.baseline import processors as P

V = 23
L = 8


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny random Llama (peaked distributions, so EOS and ties of rank matter) and its import."""
    tmp = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.5)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.generation_config.eos_token_id = None
    hf.save_pretrained(tmp / "hf")
    return hf, genloom.load(import_llama(tmp / "hf", tmp / "run"))


def hf_beam(hf, prompt, *, eos, n=1, **kw):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), do_sample=False, max_new_tokens=L,
                          eos_token_id=eos, pad_token_id=0, num_return_sequences=n, output_scores=True, return_dict_in_generate=True, **kw)
    seqs = []
    for row in out.sequences[:, len(prompt):].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]  # transformers pads after EOS
        seqs.append(row)
    return seqs, out.sequences_scores.tolist()


def cases(count):
    g = torch.Generator().manual_seed(1)
    for case in range(count):
        prompt = torch.randint(0, V, (4,), generator=g).tolist()
        yield case, prompt, [2, 3, 4, 5][case % 4], [1.0, 0.0, 2.0][case % 3], [False, True, "never"][case % 3]


def compare(hf, gen, count=18, n=2):
    """(case, transformers, genloom) for every case that disagrees; EOS = a token the free search uses."""
    wrong = []
    for case, prompt, K, lp, es in cases(count):
        free, _ = hf_beam(hf, prompt, eos=None, num_beams=K, length_penalty=lp, early_stopping=es)
        for eos in (None, free[0][1]):
            expect, scores = hf_beam(hf, prompt, eos=eos, n=min(n, K), num_beams=K, length_penalty=lp, early_stopping=es)
            got = gen.generate(prompt, max_new_tokens=L, num_beams=K, length_penalty=lp, early_stopping=es, eos_token_id=eos if eos is not None else [], num_return_sequences=min(n, K), seed=0)
            if got.ids != expect or not torch.allclose(torch.tensor(got.metrics.extra["sequence_scores"]), torch.tensor(scores), atol=1e-5):
                wrong.append((case, eos, expect, got.ids))
    return wrong


def test_beam_search_returns_transformers_hypotheses_with_and_without_eos(pair):
    hf, gen = pair
    assert compare(hf, gen) == []


class BestFinishedRule(baseline_decoders.Beam):
    """The broken variant: stop once the *best* finished hypothesis beats the best live beam."""

    def improvement_possible(self, best_live, finished_scores, length, max_length):
        return bool(best_live / (length ** self.length_penalty) > finished_scores[0])


def test_the_old_stopping_rule_is_caught(pair, monkeypatch):
    hf, gen = pair
    monkeypatch.setattr(baseline_decoders, "build_beam", lambda config, ctx: BestFinishedRule(config, ctx))
    wrong = compare(hf, gen, n=1)
    assert wrong, "the comparison must catch a beam search that stops at its best finished hypothesis"
    assert all(eos is not None for _, eos, _, _ in wrong)  # without EOS both rules agree


def test_beam_never_mode_returns_the_exact_best_under_the_score(pair):
    """early_stopping="never", length_penalty 1 and beams enough for every prefix: the returned
    hypothesis is the best of all sequences under the score (brute force), with its score."""
    _, gen = pair
    prompt, Lmax = [3, 7, 1], 3
    eos = gen.generate(prompt, max_new_tokens=Lmax, decoder="greedy").ids[0][1]
    prefixes = [[]] + [[a] for a in range(V)] + [[a, b] for a in range(V) for b in range(V)]
    with torch.no_grad():
        rows = gen.model(torch.tensor([prompt + p + [0] * (2 - len(p)) for p in prefixes]))
    logp = {tuple(p): torch.log_softmax(rows[i, len(prompt) - 1 + len(p)].float(), -1) for i, p in enumerate(prefixes)}

    def score(seq):
        return sum(float(logp[tuple(seq[:i])][t]) for i, t in enumerate(seq)) / len(seq)

    seqs, frontier = [], [[]]
    for _ in range(Lmax):
        frontier = [s + [t] for s in frontier for t in range(V)]
        seqs += [s for s in frontier if s[-1] == eos]
        frontier = [s for s in frontier if s[-1] != eos]
    best = max(seqs + frontier, key=score)
    got = gen.generate(prompt, max_new_tokens=Lmax, num_beams=V * V, early_stopping="never", eos_token_id=eos, seed=0)
    assert got.ids[0] == best
    assert abs(got.metrics.extra["sequence_scores"][0] - score(best)) < 1e-4


def test_eos_lists_stop_at_any_id(pair):
    hf, gen = pair
    prompt = [5, 9, 2, 14]
    free = gen.generate(prompt, max_new_tokens=L, decoder="greedy").ids[0]
    eos = [free[4], free[2]]  # the second id of the list comes first
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long), do_sample=False, max_new_tokens=L, eos_token_id=eos, pad_token_id=0)
    first = min(i for i, t in enumerate(free) if t in eos)
    expect = out[0, 4:].tolist()[: first + 1]
    got = gen.generate(prompt, max_new_tokens=L, decoder="greedy", eos_token_id=eos).ids[0]
    assert got == expect == free[: first + 1] and len(got) < L


def test_import_reads_generation_config_eos_set_and_defaults(tmp_path, pair):
    hf, _ = pair
    hf.save_pretrained(tmp_path / "hf")
    gc = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "eos_token_id": [3, 11], "max_new_tokens": 6, "repetition_penalty": 1.3}
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps(gc))
    gen = genloom.load(import_llama(tmp_path / "hf", tmp_path / "run"))
    assert gen.eos_ids == (3, 11)
    raw = gen.model.config.to_container()
    assert raw["decoder"]["name"] == "sampling"
    assert [p["name"] for p in raw["processors"]] == ["repetition-penalty", "temperature", "top-k", "top-p"]
    assert raw["processors"][2]["k"] == 50  # transformers' implicit top_k for sampling, written out
    assert raw["backbone"]["max_positions"] == 64
    res = gen.generate([1, 2], seed=0)
    assert len(res.ids[0]) <= 6 and all(t not in (3, 11) for t in res.ids[0][:-1])
    with pytest.raises(genloom.core.errors.GenerationError, match="64 positions"):
        gen.generate([1, 2], max_new_tokens=63)


@pytest.mark.parametrize("ours,theirs", [
    (P.Typical(0.6), transformers.TypicalLogitsWarper(mass=0.6)),
    (P.Typical(0.3, min_tokens_to_keep=4), transformers.TypicalLogitsWarper(mass=0.3, min_tokens_to_keep=4)),
    (P.Epsilon(0.03), transformers.EpsilonLogitsWarper(epsilon=0.03)),
    (P.Epsilon(0.2, min_tokens_to_keep=3), transformers.EpsilonLogitsWarper(epsilon=0.2, min_tokens_to_keep=3)),
    (P.Eta(0.05), transformers.EtaLogitsWarper(epsilon=0.05)),
    (P.Eta(0.3, min_tokens_to_keep=2), transformers.EtaLogitsWarper(epsilon=0.3, min_tokens_to_keep=2)),
    (P.TopP(0.5, min_tokens_to_keep=3), transformers.TopPLogitsWarper(top_p=0.5, min_tokens_to_keep=3)),
    (P.TopK(2, min_tokens_to_keep=4), transformers.TopKLogitsWarper(top_k=2, min_tokens_to_keep=4)),
    (P.MinP(0.2, min_tokens_to_keep=3), transformers.MinPLogitsWarper(min_p=0.2, min_tokens_to_keep=3)),
    (P.NoRepeatNGram(2), transformers.NoRepeatNGramLogitsProcessor(2)),
    (P.NoRepeatNGram(3), transformers.NoRepeatNGramLogitsProcessor(3)),
], ids=lambda x: type(x).__name__ + str(getattr(x, "min_tokens_to_keep", "")))
def test_processor_probabilities_equal_transformers(ours, theirs):
    torch.manual_seed(0)
    logits = torch.randn(6, 40) * 3
    history = torch.randint(0, 8, (6, 12))  # few distinct ids: n-grams repeat
    expect = theirs(history, logits.clone()).softmax(-1)
    got = ours(logits.clone(), history).softmax(-1)
    assert torch.equal(got.isfinite(), expect.isfinite())
    assert (got - expect).abs().max() == 0


def test_top_p_one_is_an_exact_no_op():
    logits = torch.randn(3, 1000) * 4
    assert torch.equal(P.TopP(1.0)(logits, None), logits)


def test_no_repeat_ngram_ignores_left_padding():
    hist = torch.tensor([[-1, -1, -1, 4, 5, 4], [-1, -1, -1, -1, -1, 4]])
    out = P.NoRepeatNGram(2)(torch.zeros(2, 8), hist)
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [5]  # "4 5" was seen; the tail is 4
    assert not torch.isinf(out[1]).any()
